"""Pure schedules: keep probabilities over units and time, rate targets, Gumbel temperatures.

``progress`` is the fraction of training done, in [0, 1].
"""

from __future__ import annotations

import math
from typing import Sequence


def stochastic_depth_keep(n_units: int, p_last: float) -> list[float]:
    """Huang et al. 2016, Eq. 4: ``p_l = 1 - (l / L) (1 - p_L)`` for units ``l = 1..L``."""
    return [1.0 - (i + 1) / n_units * (1.0 - p_last) for i in range(n_units)]


def linear_over_units(n_units: int, p_first: float, p_last: float) -> list[float]:
    """Linear from ``p_first`` (unit 0) to ``p_last`` (last unit); one unit gets ``p_last``."""
    if n_units == 1:
        return [p_last]
    return [p_first + (p_last - p_first) * i / (n_units - 1) for i in range(n_units)]


def linear_over_time(start: float, end: float, progress: float) -> float:
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def gated_depth_keep(n_units: int, p_min: float, p_max: float, mode: str, progress: float) -> list[float]:
    """Keep probability ``p_s`` of each unit for Gated Depth training.

    - ``constant``: every unit ``p_min``.
    - ``units``: linear over units, ``p_max`` for the first, ``p_min`` for the last (deeper
      units are dropped more, as in stochastic depth).
    - ``time``: every unit shares ``p(t)``, linear from ``p_max`` at the start to ``p_min`` at the end.
    - ``units_time``: the ``units`` profile whose last value moves from ``p_max`` to ``p_min`` over time.
    """
    if mode == "constant":
        return [p_min] * n_units
    if mode == "units":
        return linear_over_units(n_units, p_max, p_min)
    if mode == "time":
        return [linear_over_time(p_max, p_min, progress)] * n_units
    if mode == "units_time":
        return linear_over_units(n_units, p_max, linear_over_time(p_max, p_min, progress))
    raise ValueError(f"unknown keep-probability schedule {mode!r}")


def geometric_temperature(tau_start: float, tau_end: float, progress: float) -> float:
    """Gumbel temperature annealed geometrically: ``tau_start * (tau_end / tau_start) ** progress``."""
    p = min(max(progress, 0.0), 1.0)
    return tau_start * (tau_end / tau_start) ** p


def annealed_target(targets: Sequence[float], epoch: int) -> float:
    """Target rate of ``epoch`` (0-based) from an explicit per-epoch list; the last one is held."""
    return float(targets[min(epoch, len(targets) - 1)])


def stepped_target(start: float, floor: float, step: float, every: int, epoch: int) -> float:
    """Annealed target rate (002_...txt supplement Sec. S2.1): "a step-wise annealing target rate which
    decreases ``a`` amount after ``k`` epochs. Typical values are a = .05 and k = 5", from ``start``
    (Sec. 6: "annealing the target rate down from 1") to ``floor`` (the run's target), held there:
    ``max(floor, start - step * (epoch // every))`` for 0-based ``epoch``."""
    return max(floor, start - step * (epoch // every))


VARIABLE_UPDATES = ("moving_average", "ema")


def variable_target(previous: float, observed: float, n_observed: int, update: str, momentum: float) -> float:
    """Variable target rate (002_...txt supplement Sec. S2.2): "for each epoch, the target rate starts at
    a specific hyperparameter ... and then is allowed to change according to the batch's activation
    rate", by a moving average or an exponential moving average of the observed rates.

    ``previous``: the target so far this epoch (the hyperparameter before the first batch);
    ``observed``: this batch's activation rate; ``n_observed``: batches observed this epoch, this one
    included (1-based). ``moving_average``: the mean of the hyperparameter and the ``n_observed``
    rates, ``previous + (observed - previous) / (n_observed + 1)``; ``ema``: ``momentum * previous +
    (1 - momentum) * observed``.
    """
    if update == "moving_average":
        return previous + (observed - previous) / (n_observed + 1)
    if update == "ema":
        return ema(previous, observed, momentum)
    raise ValueError(f"unknown variable-target update {update!r}; use one of {VARIABLE_UPDATES}")


def ema(previous: float, observed: float, momentum: float) -> float:
    """Exponential moving average: ``momentum * previous + (1 - momentum) * observed``."""
    return momentum * previous + (1.0 - momentum) * observed


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str, milestones: Sequence[int] = (),
              gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine / step /
    multistep / constant.

    ``multistep``: ``gamma ** (number of milestones <= step)``, ``milestones`` in steps counted from
    the start of training (``optim.milestones`` epochs times the steps per epoch): the probabilistic-
    gates paper (``002_...txt``, Sec. 4.1.1, ImageNet: "step-wise learning rate starting at 0.1, and after
    every 30 epochs decay by 10^-1", 100 epochs, as AIG's ``train_img.py``) and ADN's official ResNet
    command (``--lr-scheduler multisteplr --lr-multi-steps 60 100 140``, 150 epochs, ``gamma`` 0.1).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "multistep":
        return gamma ** sum(step >= m for m in milestones)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if kind == "step":  # x0.1 at 50 % and 75 % of training (He et al. 2016)
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0
