"""The one evaluation path: accuracy of a sub-network (a pattern) or of a gate strategy, KL between
two sub-networks, BatchNorm re-estimation, and ``candidate_table``: every candidate a trained model
deploys, with its top-1 and cost, which training, the search objective, the selector and the menus
all use (so one checkpoint gives the same numbers everywhere).

``gates`` is anything ``GatedResNet.forward`` takes (``None``, ``SkipPattern``, a ``[1 or B,
n_units]`` keep tensor, a ``GateFn``), or ``PerBatch(draw)`` when the gates must be drawn afresh
for every batch (stochastic inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gatesearch.losses import kl_logits
from gatesearch.models import Gates
from gatesearch.patterns import SkipPattern, all_patterns
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


# ----------------------------------------------------------------- the candidate table
# What a trained model can deploy, scored on one split: its fixed patterns (as the method evaluates
# them: calibrated methods' full network scaled by p_s), and for learned gates its inference
# strategies at their measured activation. Training (per-epoch metrics and the frontier score), the
# search objective, ``gatesearch select`` and the menus all call ``candidate_table``.

#: Patterns the selector scores exhaustively up to this many units (beam search above).
EXHAUSTIVE_MAX_UNITS = 12


def ladder(n_units: int) -> list[SkipPattern]:
    """Super-net, then one more unit skipped from the last backwards, down to the base-net (n+1 patterns)."""
    return [SkipPattern(tuple(i >= n_units - k for i in range(n_units))) for k in range(n_units + 1)]


class _Deterministic:
    """Context: the global RNG and ``loader``'s shuffling seeded with ``seed``, restored afterwards,
    so BN re-estimation sees the same batches (crops and flips included) in training and in select."""

    def __init__(self, loader: Iterable, seed: int) -> None:
        self.gen = getattr(loader, "generator", None)
        self.seed = seed

    def __enter__(self) -> None:
        self.fork = torch.random.fork_rng(devices=[])
        self.fork.__enter__()
        torch.manual_seed(self.seed)
        if self.gen is not None:
            self.state = self.gen.get_state()
            self.gen.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self.gen is not None:
            self.gen.set_state(self.state)
        self.fork.__exit__(*exc)


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def _with_reestimated_bn(model: nn.Module, bn_loader: Iterable, gates: GateSource, n_batches: int,
                         device: torch.device, seed: int, score: Callable[[], Any]) -> Any:
    """``score()`` after re-estimating BN for ``gates`` on ``n_batches`` seeded batches; the model's
    own statistics are put back afterwards."""
    saved = _bn_state(model)
    try:
        with _Deterministic(bn_loader, seed):
            reestimate_bn(model, bn_loader, gates, n_batches, device)
        return score()
    finally:
        model.load_state_dict(saved, strict=False)


def _pattern_rows(model: nn.Module, method: Any, loader: Iterable, patterns: Sequence[SkipPattern],
                  device: torch.device, bn_loader: Iterable | None, bn_batches: int, seed: int) -> list:
    """One row per pattern: shared-prefix (trie) evaluation where the method evaluates the pattern as
    it is and BN is not re-estimated, else one by one (calibrated gates, re-estimated BN)."""
    from dataclasses import replace

    from gatesearch.selection.score import PatternScore, evaluate_patterns_trie

    gates = {str(p): (method.eval_gates(model, p) if method is not None else p) for p in patterns}
    trie = [p for p in patterns if gates[str(p)] is p and bn_batches == 0]
    rows = {s.pattern: s for s in evaluate_patterns_trie(model, loader, trie, device)} if trie else {}
    for p in patterns:
        name, g = str(p), gates[str(p)]
        if name in rows:
            continue
        def score(g: Gates = g) -> EvalResult:
            return evaluate(model, loader, g, device)
        r = score() if bn_batches == 0 else _with_reestimated_bn(model, bn_loader or loader, g, bn_batches, device,
                                                                 seed, score)
        rows[name] = PatternScore(name, "pattern" if g is p else "calibrated", r.top1, r.top5, r.correct1,
                                  r.correct5, r.n, unit_rates=tuple(0.0 if s else 1.0 for s in p.skipped))
    return [replace(rows[str(p)]) for p in patterns]


def _strategy_rows(model: nn.Module, loader: Iterable, device: torch.device, thresholds: Sequence[float],
                   runs: int, seed: int, bn_loader: Iterable | None, bn_batches: int) -> list:
    """Probgates inference strategies (threshold sweep, always-on, stochastic, ensemble); with BN
    re-estimation each strategy first re-estimates BN under its own gates (sampled ones drawn)."""
    from gatesearch.selection.score import score_strategies, strategy_source

    if bn_batches == 0:
        return score_strategies(model, loader, device, thresholds, runs, seed)
    rows = []
    for mode in [("threshold", t) for t in thresholds] + [("always_on", 0.0), ("sampled", 0.0)]:
        src = strategy_source(model, mode[0], mode[1], seed)
        only = dict(thresholds=[mode[1]] if mode[0] == "threshold" else [], runs=runs if mode[0] == "sampled" else 0,
                    always_on=mode[0] == "always_on")
        rows += _with_reestimated_bn(model, bn_loader or loader, src, bn_batches, device, seed,
                                     lambda only=only: score_strategies(model, loader, device, seed=seed, **only))
    return rows


def candidate_table(
    model: nn.Module, method: Any, loader: Iterable, device: torch.device | str, *, input_shape: tuple[int, ...],
    patterns: Sequence[SkipPattern] | None = None, bn_loader: Iterable | None = None, bn_batches: int = 0,
    strategies: bool = True, thresholds: Sequence[float] | None = None, runs: int | None = None, seed: int = 0,
    cost: str = "macs", beam_width: int = 8, costs: Any = None,
) -> list:
    """Every candidate ``model`` deploys, scored on ``loader``: a list of ``selection.score.PatternScore``
    with ``macs`` (per image, expected for strategies) and ``cost`` (relative to the super-net on the
    ``cost`` axis, ``"macs"`` or ``"latency:<device>"``) filled in.

    - ``patterns``: the fixed patterns to score; ``None``: all of them up to ``EXHAUSTIVE_MAX_UNITS``
      units, else a beam search from the super-net (``selection.score.beam_search``).
    - ``method``: a ``methods.Method`` whose ``eval_gates`` gives each pattern's gates (Gated Depth /
      stochastic depth calibrate the full network); ``None`` evaluates the patterns as they are.
    - ``bn_batches > 0``: BN is re-estimated per candidate on that many seeded ``bn_loader`` batches
      (calibrated gates and strategies under their own gates), the model's statistics kept.
    - ``strategies``: for models with gate heads, the inference strategies (``thresholds`` sweep
      with the method's own threshold added, always-on, stochastic and ensemble over ``runs``).
    """
    from dataclasses import replace

    from gatesearch.cost import CandidateCosts
    from gatesearch.selection.score import DEFAULT_THRESHOLDS, beam_search

    device = torch.device(device)
    was = model.training
    model.eval()
    try:
        n = model.n_units
        if patterns is None:
            patterns = all_patterns(n) if n <= EXHAUSTIVE_MAX_UNITS else [
                SkipPattern.parse(s.pattern) for s in beam_search(model, loader, beam_width, device)]
        rows = _pattern_rows(model, method, loader, list(dict.fromkeys(patterns)), device, bn_loader, bn_batches, seed)
        if strategies and getattr(model, "gate_heads", None) is not None:
            opts = getattr(getattr(getattr(method, "cfg", None), "method", None), "probgates", None)
            ts = sorted(set(thresholds or DEFAULT_THRESHOLDS) | ({opts.threshold} if opts is not None else set()))
            r = runs if runs is not None else (opts.runs if opts is not None else 5)
            rows += _strategy_rows(model, loader, device, ts, r, seed, bn_loader, bn_batches)
    finally:
        model.train(was)
    costs = costs or CandidateCosts(model, input_shape, cost)
    out = []
    for r in rows:
        fixed = r.strategy in ("pattern", "calibrated")
        macs, rel = costs.price(r.pattern, None if fixed else r.unit_rates, r.passes)
        out.append(replace(r, macs=macs, cost=rel))
    return out


def frontier_of(rows: Sequence[Any]) -> float:
    """The frontier score (``selection.pareto.frontier_score``) of a candidate table's (cost, top-1) points."""
    from gatesearch.selection.pareto import frontier_score

    return frontier_score([r.cost for r in rows], [r.top1 for r in rows])


def metric_name(row: Any) -> str:
    """The per-epoch metric suffix of a candidate: its pattern (``FFT``) for fixed patterns, the
    strategy otherwise (``threshold_0.50``, ``always_on``, ``stochastic``, ``ensemble``)."""
    return row.pattern if row.strategy in ("pattern", "calibrated") else row.strategy.replace(":", "_")


def table_metrics(rows: Sequence[Any]) -> dict[str, float]:
    """``top1_<name>`` and ``cost_<name>`` of every candidate, and ``frontier_score``: exactly the
    numbers the score is computed from, so a logged score can be recomputed from the logged metrics."""
    m: dict[str, float] = {}
    for r in rows:
        m[f"top1_{metric_name(r)}"] = r.top1
        m[f"cost_{metric_name(r)}"] = r.cost
    m["frontier_score"] = frontier_of(rows)
    return m
