"""The method interface ``train.fit`` talks to.

A method is built once per run as ``Method(cfg, model, steps_per_epoch)`` and then:

- ``ce(logits, y)``: the cross-entropy (with ``train.label_smoothing``) every method uses;
- ``param_groups(model)`` -> optimizer parameter groups (a method may give its gate parameters
  their own learning-rate multiplier / weight decay; each group may carry ``lr_mult``);
- ``train_step(model, x, y, step, epoch, backward)`` -> ``StepResult``: the loss to back-propagate,
  or ``None`` when the method already called ``backward`` itself (two-backward variants), plus
  named float parts for logging (``ce``, ``kd``, ``rate_loss``, ...);
- ``eval_gates(model, pattern)`` -> the gates that evaluate ``pattern`` (calibrated methods
  scale the gated path of the super-net by the keep probability);
- ``eval_metrics(model, loader, device)`` -> extra per-epoch metrics (gate rates, strategies);
- ``state_dict()`` / ``load_state_dict()`` for scalars a resume must restore.

``fit`` wraps ``train_step`` in autocast and owns the optimizer, scheduler and scaler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from gatesearch.config import Config
from gatesearch.models import GatedResNet, Gates
from gatesearch.parallel import broadcast_
from gatesearch.patterns import SkipPattern

Backward = Callable[[torch.Tensor], None]


@dataclass
class StepResult:
    loss: torch.Tensor | None  # scalar; None when the method ran backward itself
    parts: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class: the ``plain`` recipe (cross-entropy of the super-net)."""

    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.n_units = model.n_units
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, steps_per_epoch * cfg.train.epochs)
        self.label_smoothing = cfg.train.label_smoothing

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cross-entropy every method trains with: ``logits [B, K]`` against labels ``y [B]``,
        batch mean, with ``train.label_smoothing`` eps (Szegedy et al. 2016, Sec. 7: the target is
        ``(1 - eps) * onehot(y) + eps / K``). Scalar."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def progress(self, step: int) -> float:
        """Fraction of training done at global ``step``, in [0, 1]."""
        return min(1.0, step / self.total_steps)

    def param_groups(self, model: GatedResNet) -> list[dict]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        loss = self.ce(model(x), y)
        return StepResult(loss, {"ce": scalar(loss)})

    def eval_gates(self, model: GatedResNet, pattern: SkipPattern) -> Gates:
        return pattern

    def eval_metrics(self, model: GatedResNet, loader: Iterable, device: torch.device) -> dict[str, float]:
        return {}

    def finish_training(self, model: GatedResNet, train_loader: Iterable, device: torch.device) -> None:
        """Called once, after the last epoch's training steps and before that epoch's evaluation and
        checkpoint, on the weights that are evaluated (a method's final step; none by default)."""

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        pass


def scalar(t: torch.Tensor) -> float:
    """A detached Python float of a scalar tensor (for logging parts)."""
    return t.detach().item()


def draw_pattern(keep_probs: list[float]) -> SkipPattern:
    """One Bernoulli draw per unit: unit ``s`` is kept with probability ``keep_probs[s]``.

    One pattern per mini-batch (Gated Depth, 000 Sec. 3, Eq. 4: "For each mini-batch B, we sample one
    gate configuration b"; stochastic depth, Huang et al. 2016 Sec. 3, per mini-batch too). Under data
    parallelism the global batch is the mini-batch: rank 0's uniform draws are broadcast, so every rank
    trains the same pattern at every step (the ranks' shards are one batch of one sub-network)."""
    u = broadcast_(torch.rand(len(keep_probs)))  # [n_units]; rank 0's draws on every rank
    kept = u < torch.tensor(keep_probs)
    return SkipPattern(tuple(not bool(k) for k in kept))


def calibrated(pattern: SkipPattern, keep_probs: list[float], device: torch.device | None = None) -> Gates:
    """Super-net gates whose gated paths are scaled by their keep probability (Gated Depth, paper 000
    Sec. 4 "Inference-time Considerations"; stochastic depth's test rule, Huang et al. 2016 Sec. 3): a
    ``[1, n_units]`` keep-factor tensor filled with ``p_s`` (broadcast over the batch); the stages then
    use their "unit runs" norm set (``models.base.stage_switch``). Other patterns unchanged. Tested
    against the forward written out block by block (``tests/test_evaluate.py``)."""
    if any(pattern.skipped) or not pattern.skipped:
        return pattern
    return torch.tensor([keep_probs], device=device)
