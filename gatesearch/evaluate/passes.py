"""Accuracy of one sub-network or gate source on a loader (deterministic, stochastic, ensemble), KL
between two sub-networks, and BatchNorm re-estimation.

``gates`` is anything ``GatedNet.forward`` takes (``None``, ``SkipPattern``, a ``[1 or B, n_units]``
keep tensor, a ``GateFn``), or ``PerBatch(draw)`` when the gates must be drawn afresh for every
batch (stochastic inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gatesearch.losses import kl_logits
from gatesearch.models import Gates
from gatesearch.parallel import same_batches, summed
from gatesearch.stats import sample_std


@dataclass(frozen=True)
class PerBatch:
    """Gates drawn for each batch: ``draw(x [B, C, H, W]) -> Gates``."""

    draw: Callable[[torch.Tensor], Gates]


GateSource = Gates | PerBatch


@dataclass(frozen=True)
class EvalResult:
    top1: float  # fraction in [0, 1]
    top5: float
    correct1: int
    correct5: int
    n: int


def _gates_for(gates: GateSource, x: torch.Tensor) -> Gates:
    return gates.draw(x) if isinstance(gates, PerBatch) else gates


def _batches(loader: Iterable, device: torch.device, max_batches: int | None) -> Iterable:
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """Top-1 and top-5 hits of ``logits [B, K]`` against ``y [B]``."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # [B, 5]
    hits = top == y[:, None]
    return int(hits[:, 0].sum()), int(hits.any(1).sum())


class _EvalMode:
    """Context: eval mode and no grad, restoring the training flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.grad.__exit__(*exc)
        self.model.train(self.was)


def evaluate(
    model: nn.Module, loader: Iterable, gates: GateSource, device: torch.device | str, max_batches: int | None = None
) -> EvalResult:
    """Top-1 / top-5 of ``model`` under ``gates`` over ``loader`` (eval-mode BN)."""
    return evaluate_ensemble(model, loader, gates, device, runs=1, max_batches=max_batches)


def evaluate_ensemble(
    model: nn.Module, loader: Iterable, gates: GateSource, device: torch.device | str, runs: int,
    max_batches: int | None = None,
) -> EvalResult:
    """Accuracy of the mean softmax over ``runs`` forward passes per batch (gates redrawn each run)."""
    device = torch.device(device)
    c1 = c5 = n = 0
    with _EvalMode(model):
        for x, y in _batches(loader, device, max_batches):
            if runs == 1:
                scores = model(x, _gates_for(gates, x))
            else:
                scores = sum(F.softmax(model(x, _gates_for(gates, x)).float(), 1) for _ in range(runs))
            a, b = _counts(scores, y)
            c1, c5, n = c1 + a, c5 + b, n + len(y)
    c1, c5, n = (int(v) for v in summed([c1, c5, n]))  # data parallelism: each rank scored its shard
    return EvalResult(c1 / max(n, 1), c5 / max(n, 1), c1, c5, n)


def evaluate_stochastic(
    model: nn.Module, loader: Iterable, gates: GateSource, device: torch.device | str, runs: int
) -> tuple[float, float]:
    """Mean and standard deviation of top-1 over ``runs`` full passes with freshly drawn gates."""
    accs = [evaluate(model, loader, gates, device).top1 for _ in range(runs)]
    return sum(accs) / runs, sample_std(accs)



def kl_between(
    model: nn.Module, loader: Iterable, teacher: Gates, student: Gates, device: torch.device | str,
    max_batches: int | None = None,
) -> float:
    """Mean ``KL(p_teacher || p_student)`` of the two sub-networks' predictions over ``loader``."""
    device = torch.device(device)
    total, n = 0.0, 0
    with _EvalMode(model):
        for x, _ in _batches(loader, device, max_batches):
            total += float(kl_logits(model(x, teacher), model(x, student))) * len(x)
            n += len(x)
    total, n = summed([total, n])  # data parallelism: each rank scored its shard
    return total / max(n, 1)


@torch.no_grad()
def reestimate_bn(
    model: nn.Module, loader: Iterable, gates: GateSource, n_batches: int, device: torch.device | str
) -> None:
    """Re-estimate BatchNorm statistics for the sub-network ``gates`` (``PerBatch`` gates are drawn
    for each batch) from ``n_batches`` training batches (train-mode forward passes, no grad, cumulative average: ``momentum=None``).

    BN layers that the pattern does not run (skipped units, the unused switchable set) keep
    their previous statistics.
    """
    device = torch.device(device)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    try:
        with same_batches():  # data parallelism: every rank re-estimates on the whole split's batches
            for x, _ in _batches(loader, device, n_batches):
                model(x, _gates_for(gates, x))
    finally:
        model.train(was)
        for m, (mean, var, count, momentum) in zip(bns, saved):
            m.momentum = momentum
            if int(m.num_batches_tracked) == 0:  # not on this pattern's path: put the old stats back
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
