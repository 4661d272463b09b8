"""Cost of a sub-network: MACs and parameters, measured by running it.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2 for the matmul/conv/attention ops it
counts; ``gatesearch.flops`` adds CPU fused attention),
never from hand-kept tables; active parameters are those of the modules that actually ran,
so a skipped unit's weights and an unused switchable-BN set do not count.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from gatesearch.devices.profiles import get_device
from gatesearch.devices.roofline import predict_ms, trace_layers
from gatesearch.flops import flop_counter
from gatesearch.models import Gates
from gatesearch.patterns import SkipPattern


@torch.no_grad()
def count_macs(model: nn.Module, gates: Gates, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass of an input ``[B, C, H, W]`` (``input_shape``) under ``gates``."""
    was_training = model.training
    model.eval()
    x = torch.zeros(input_shape, device=_device_of(model))
    with flop_counter() as counter:  # counts CPU fused attention too
        model(x, gates)
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def count_params(model: nn.Module, gates: Gates, input_shape: tuple[int, ...]) -> int:
    """Parameters (and BN affine weights) of the modules that run under ``gates``.

    Gate heads are not counted: an exported sub-network has fixed gates and no heads.
    """
    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(id(mod))) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(input_shape, device=_device_of(model)), gates)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # a module marked ``reads_children_weights`` (models/base.py: Swin's window attention) uses its children's
    # weights functionally, so no hook sees them run: when it runs, all of its parameters count
    ran |= {id(d) for m in model.modules() if id(m) in ran and getattr(m, "reads_children_weights", False)
            for d in m.modules()}
    return sum(p.numel() for m in model.modules() if id(m) in ran for p in m.parameters(recurse=False))


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class CandidateCosts:
    """Costs of a model's candidates on one axis, relative to the super-net, cached per pattern.

    ``axis`` is ``"macs"`` (per image, ``count_macs``) or ``"latency:<device>"`` (the selector's
    roofline model of that device at batch 1, ``devices.roofline.predict_ms``), the two cost axes
    a study can score on (``train.score_cost``). A fixed pattern costs what it runs; an inference
    strategy that runs unit ``u`` for a fraction ``rate_u`` of the samples costs, in expectation,
    ``cost(base) + sum_u rate_u * (cost(super) - cost(super without u))``, times its forward passes.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], axis: str = "macs") -> None:
        self.model, self.shape, self.axis = model, (1, *input_shape), axis
        self._macs: dict[str, int] = {}
        self._axis: dict[str, float] = {}
        self.profile = None
        if axis.startswith("latency:"):
            self.profile = get_device(axis.split(":", 1)[1])
        elif axis != "macs":
            raise ValueError(f"cost axis must be 'macs' or 'latency:<device>', got {axis!r}")

    def macs(self, pattern: str) -> int:
        if pattern not in self._macs:
            self._macs[pattern] = count_macs(self.model, SkipPattern.parse(pattern, len(pattern)), self.shape)
        return self._macs[pattern]

    def _value(self, pattern: str) -> float:
        if self.profile is None:
            return float(self.macs(pattern))
        if pattern not in self._axis:
            p = SkipPattern.parse(pattern, len(pattern))
            self._axis[pattern] = predict_ms(trace_layers(self.model, p, self.shape), self.profile)
        return self._axis[pattern]

    def expected(self, value: Callable[[str], float], rates: Sequence[float], passes: int = 1) -> float:
        """``passes * (value(base) + sum_u rates[u] * (value(super) - value(super with u skipped)))``."""
        n = len(rates)
        sup, base = "F" * n, "T" * n
        singles = [sup[:u] + "T" + sup[u + 1:] for u in range(n)]
        return passes * (value(base) + sum(r * (value(sup) - value(s)) for r, s in zip(rates, singles)))

    def price(self, pattern: str, rates: Sequence[float] | None = None, passes: int = 1) -> tuple[float, float]:
        """``(macs per image, cost relative to the super-net on the axis)`` of a fixed ``pattern``
        (``rates is None``) or of a strategy with per-unit ``rates`` and ``passes`` forward passes."""
        n = len(pattern)
        sup = "F" * n
        if rates is None:
            return float(self.macs(pattern)), self._value(pattern) / self._value(sup)
        macs = self.expected(lambda p: float(self.macs(p)), rates, passes)
        return macs, self.expected(self._value, rates, passes) / self._value(sup)
