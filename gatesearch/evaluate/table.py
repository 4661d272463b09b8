"""``candidate_table``: every candidate a trained model deploys, scored on one split, with its top-1 and
cost: its fixed patterns (as the method evaluates them: calibrated methods' full network scaled by
p_s), and for learned gates its inference strategies at their measured activation. Training
(per-epoch metrics and the frontier score), the search objective, ``gatesearch select`` and the
menus all call it, so one checkpoint gives the same numbers everywhere.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from gatesearch.cost import CandidateCosts
from gatesearch.evaluate.frontier import frontier_score
from gatesearch.evaluate.passes import EvalResult, GateSource, evaluate, reestimate_bn
from gatesearch.evaluate.strategies import DEFAULT_THRESHOLDS, score_strategies, strategy_source
from gatesearch.evaluate.walk import PatternScore, beam_search, evaluate_patterns_trie
from gatesearch.models import Gates
from gatesearch.patterns import SkipPattern, all_patterns

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
    """Every candidate ``model`` deploys, scored on ``loader``: a list of ``walk.PatternScore``
    with ``macs`` (per image, expected for strategies) and ``cost`` (relative to the super-net on the
    ``cost`` axis, ``"macs"`` or ``"latency:<device>"``) filled in.

    - ``patterns``: the fixed patterns to score; ``None``: all of them up to ``EXHAUSTIVE_MAX_UNITS``
      units, else a beam search from the super-net (``walk.beam_search``).
    - ``method``: a ``methods.Method`` whose ``eval_gates`` gives each pattern's gates (Gated Depth /
      stochastic depth calibrate the full network); ``None`` evaluates the patterns as they are.
    - ``bn_batches > 0``: BN is re-estimated per candidate on that many seeded ``bn_loader`` batches
      (calibrated gates and strategies under their own gates), the model's statistics kept.
    - ``strategies``: for models with gate heads, the inference strategies (``thresholds`` sweep
      with the method's own threshold added, always-on, stochastic and ensemble over ``runs``).
    """
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
    """The frontier score (``frontier.frontier_score``) of a candidate table's (cost, top-1) points."""
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
