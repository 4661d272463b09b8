"""Score every sub-network of a trained gated ResNet on real data.

Fixed patterns are evaluated with a **prefix trie** over units: per batch the stem runs once,
then the network is walked depth-first, branching on each unit's flag (and, with switchable
BN, on the flag that picks a stage's base BN set before the base runs). The activations after
the first k units are therefore computed once per distinct prefix instead of once per pattern,
and because every pattern still runs exactly the same ops in the same order on the same batch,
the numbers are identical to evaluating ``model(x, pattern)`` pattern by pattern (tested).

Above ``evaluate.EXHAUSTIVE_MAX_UNITS`` units, 2^N is too many: ``beam_search`` skips one more unit
per level from the super-net, keeping the ``width`` most accurate patterns of each level.
``evaluate.candidate_table`` puts these pieces together (the one evaluation path).

Probabilistic-gate models (``model.gate_heads``) also get their *inference strategies* scored
(Herrmann et al.): threshold tau sweep, always-on, stochastic (mean +- std over R runs) and
ensemble (softmax averaged over R runs), each with its measured per-unit activation rate.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gatesearch.models import GatedResNet
from gatesearch.models.gated_resnet import skip_unit
from gatesearch.models.gates import gumbel_gate
from gatesearch.models.norm import UNIT_OFF, UNIT_ON
from gatesearch.patterns import SkipPattern
from gatesearch.stats import sample_std

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class PatternScore:
    """Accuracy of one candidate. ``strategy`` is ``pattern`` for a fixed skip pattern, else the
    probgates inference strategy (``threshold:0.50``, ``always_on``, ``stochastic``, ``ensemble``);
    ``unit_rates [n_units]`` is the measured fraction of samples that ran each unit."""

    pattern: str
    strategy: str
    top1: float
    top5: float
    correct1: int
    correct5: int
    n: int
    top1_std: float = 0.0
    unit_rates: tuple[float, ...] = ()
    passes: int = 1  # forward passes per input (ensemble: R)
    macs: float = 0.0  # per image; expected for strategies (filled by evaluate.candidate_table)
    cost: float = 0.0  # relative to the super-net on the score's cost axis (idem)


@dataclass(frozen=True)
class ScoreResult:
    scores: list[PatternScore]
    search: str  # "exhaustive" | "beam(width=W)"
    bn_mode: str  # "switchable" | "plain" | "reestimated"
    extras: dict = field(default_factory=dict)


def _topk_correct(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """Correct counts at top-1 and top-min(5, C) for ``logits [B, C]``, ``target [B]``."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # [B, k]
    hit = top.eq(target.view(-1, 1))
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


def _levels(model: GatedResNet) -> list[tuple[str, int, nn.Module]]:
    """The walk the trie branches on: ``("base", stage_index, stage)`` then ``("unit", u, blocks)``
    per unit, in execution order (exactly ``Stage.forward``'s order for a ``SkipPattern``)."""
    levels: list[tuple[str, int, nn.Module]] = []
    for s, stage in enumerate(model.stages):
        levels.append(("base", s, stage))
        for j, unit in enumerate(stage.units):
            levels.append(("unit", stage.unit_offset + j, unit))
    return levels


def _run_level(level: tuple[str, int, nn.Module], h: torch.Tensor, pattern: SkipPattern) -> torch.Tensor:
    kind, _, mod = level
    if kind == "base":
        sw = mod.switch_unit
        which = UNIT_OFF if sw is not None and pattern.skipped[sw] else UNIT_ON
        for block in mod.base:
            h = block(h, which)
        return h
    for block in mod:
        h = block(h)
    return h


def _key(level: tuple[str, int, nn.Module], pattern: SkipPattern) -> bool | None:
    kind, idx, mod = level
    if kind == "base":
        return None if mod.switch_unit is None else pattern.skipped[mod.switch_unit]
    return pattern.skipped[idx]


def _walk(
    model: GatedResNet,
    levels: list,
    depth: int,
    h: torch.Tensor,
    patterns: list[SkipPattern],
    visit: Callable[[torch.Tensor, list[SkipPattern]], None],
) -> None:
    """Depth-first over the trie: one live activation per level keeps memory bounded."""
    if depth == len(levels):
        visit(model.head(h), patterns)
        return
    level = levels[depth]
    groups: dict[bool | None, list[SkipPattern]] = defaultdict(list)
    for p in patterns:
        groups[_key(level, p)].append(p)
    for key, group in groups.items():
        skipping = level[0] == "unit" and key
        out = skip_unit(level[2], h) if skipping else _run_level(level, h, group[0])
        _walk(model, levels, depth + 1, out, group, visit)


def _to_scores(counts: dict[SkipPattern, list[int]], patterns: Sequence[SkipPattern]) -> list[PatternScore]:
    out = []
    for p in patterns:
        c1, c5, n = counts[p]
        out.append(PatternScore(str(p), "pattern", c1 / max(n, 1), c5 / max(n, 1), c1, c5, n,
                                unit_rates=tuple(0.0 if s else 1.0 for s in p.skipped)))
    return out


@torch.no_grad()
def evaluate_patterns_trie(
    model: GatedResNet, loader: Iterable, patterns: Sequence[SkipPattern], device: torch.device | str = "cpu"
) -> list[PatternScore]:
    """Top-1/top-5 of every pattern, sharing work between patterns with a common prefix."""
    model.eval()
    patterns = list(dict.fromkeys(patterns))
    counts = {p: [0, 0, 0] for p in patterns}
    levels = _levels(model)
    for x, y in loader:
        x, y = x.to(device), y.to(device)

        def visit(logits: torch.Tensor, group: list[SkipPattern], y: torch.Tensor = y) -> None:
            c1, c5 = _topk_correct(logits, y)
            for p in group:
                counts[p][0] += c1
                counts[p][1] += c5
                counts[p][2] += y.numel()

        _walk(model, levels, 0, model.stem(x), patterns, visit)
    return _to_scores(counts, patterns)


@torch.no_grad()
def evaluate_patterns_naive(
    model: GatedResNet, loader: Iterable, patterns: Sequence[SkipPattern], device: torch.device | str = "cpu"
) -> list[PatternScore]:
    """Reference: ``model(x, pattern)`` for every pattern and batch (no sharing)."""
    model.eval()
    patterns = list(dict.fromkeys(patterns))
    counts = {p: [0, 0, 0] for p in patterns}
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        for p in patterns:
            c1, c5 = _topk_correct(model(x, p), y)
            counts[p][0] += c1
            counts[p][1] += c5
            counts[p][2] += y.numel()
    return _to_scores(counts, patterns)


def beam_search(
    model: GatedResNet, loader: Iterable, width: int = 8, device: torch.device | str = "cpu"
) -> list[PatternScore]:
    """From the super-net, skip one more unit per level; keep the ``width`` most accurate
    patterns of each level (ties: fewer kept units first). Returns every pattern scored."""
    n = model.n_units
    scored: dict[str, PatternScore] = {}
    beam = [SkipPattern.super_net(n)]
    for level in range(n + 1):
        fresh = [p for p in beam if str(p) not in scored]
        for s in evaluate_patterns_trie(model, loader, fresh, device) if fresh else []:
            scored[s.pattern] = s
        beam = sorted(beam, key=lambda p: -scored[str(p)].top1)[:width]
        if level == n:
            break
        nxt = {}
        for p in beam:
            for u in range(n):
                if not p.skipped[u]:
                    q = SkipPattern(p.skipped[:u] + (True,) + p.skipped[u + 1:])
                    nxt[str(q)] = q
        beam = list(nxt.values())
    return list(scored.values())


# ----------------------------------------------------------------- probgates strategies


def _gate_fn(model: GatedResNet, mode: str, tau: float, gen: torch.Generator | None,
             rates: list[list[float]]) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """A ``GateFn`` deciding each unit from its gate head; appends ``keep [B]`` sums to ``rates``."""

    def fn(u: int, h: torch.Tensor) -> torch.Tensor:
        logits = model.gate_heads[u](h)  # [B, 2], index 1 = keep
        if mode == "threshold":
            keep = (F.softmax(logits, dim=-1)[:, 1] >= tau).to(h.dtype)
        elif mode == "always_on":
            keep = torch.ones(h.shape[0], dtype=h.dtype, device=h.device)
        else:  # stochastic: a hard Gumbel sample is an exact draw from softmax(logits)
            keep, _ = gumbel_gate(logits, tau=1.0, hard=True, generator=gen)
        rates[u][0] += float(keep.sum())
        rates[u][1] += keep.numel()
        return keep

    return fn


def _forward_strategy(model: GatedResNet, x: torch.Tensor, fn: Callable) -> torch.Tensor:
    if not model.switchable_bn:
        return model(x, fn)
    # Switchable BN needs decisions before a stage runs: only data-independent heads (LogitGate)
    # are allowed there (config check), so ask each head on a dummy input of the right batch.
    keep = torch.stack([fn(u, x.new_zeros(x.shape[0], c, 1, 1)) for u, c in enumerate(model.unit_channels)], 1)
    return model(x, keep)


def strategy_source(model: GatedResNet, mode: str, tau: float, seed: int) -> Any:
    """The gates of one strategy as ``forward`` (or ``evaluate.PerBatch``) takes them, for BN
    re-estimation under that strategy: ``threshold`` at ``tau``, ``always_on``, or ``sampled`` (one
    draw per sample and unit from the gate's keep probability, seeded)."""
    from gatesearch.evaluate import PerBatch

    sink = [[0.0, 0] for _ in range(model.n_units)]
    gen = None
    if mode == "sampled":
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    fn = _gate_fn(model, "stochastic" if mode == "sampled" else mode, tau, gen, sink)
    if not model.switchable_bn:
        return fn
    return PerBatch(lambda x: torch.stack([fn(u, x.new_zeros(x.shape[0], c, 1, 1))
                                           for u, c in enumerate(model.unit_channels)], 1))


@torch.no_grad()
def score_strategies(
    model: GatedResNet, loader: Iterable, device: torch.device | str = "cpu",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, runs: int = 5, seed: int = 0, always_on: bool = True,
) -> list[PatternScore]:
    """Threshold sweep, always-on, stochastic (mean +- ``sample_std`` of top-1 over ``runs`` draws; 5 as
    002_...txt Fig. 4) and ensemble (softmax averaged over the same draws) for a model with
    ``gate_heads``; ``runs=0`` leaves out the two sampled strategies, ``always_on=False`` that one."""
    if model.gate_heads is None:
        raise ValueError("inference strategies need a model with gate heads (probgates)")
    model.eval()
    n = model.n_units
    modes = [("threshold", t) for t in thresholds] + ([("always_on", 0.0)] if always_on else [])
    det = {m: {"c": [0, 0, 0], "r": [[0.0, 0] for _ in range(n)]} for m in modes}
    sto_c = [[0, 0, 0] for _ in range(runs)]
    ens_c = [0, 0, 0]
    sto_r = [[0.0, 0] for _ in range(n)]
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        for m in modes:
            logits = _forward_strategy(model, x, _gate_fn(model, m[0], m[1], None, det[m]["r"]))
            c1, c5 = _topk_correct(logits, y)
            det[m]["c"][0] += c1
            det[m]["c"][1] += c5
            det[m]["c"][2] += y.numel()
        prob_sum = 0.0
        for r in range(runs):
            logits = _forward_strategy(model, x, _gate_fn(model, "stochastic", 0.0, gen, sto_r))
            c1, c5 = _topk_correct(logits, y)
            sto_c[r][0] += c1
            sto_c[r][1] += c5
            sto_c[r][2] += y.numel()
            prob_sum = prob_sum + F.softmax(logits, dim=-1)
        if runs:
            c1, c5 = _topk_correct(prob_sum, y)
            ens_c = [ens_c[0] + c1, ens_c[1] + c5, ens_c[2] + y.numel()]
    out = []
    for (mode, tau), d in det.items():
        c1, c5, cnt = d["c"]
        rates = tuple(k / max(m, 1) for k, m in d["r"])
        name = f"threshold:{tau:.2f}" if mode == "threshold" else mode
        out.append(PatternScore(_majority(rates), name, c1 / cnt, c5 / cnt, c1, c5, cnt, unit_rates=rates))
    if runs == 0:
        return out
    rates = tuple(k / max(m, 1) for k, m in sto_r)
    accs = [c1 / max(m, 1) for c1, _, m in sto_c]
    std = sample_std(accs)
    c1_mean, c5_mean = (round(sum(c[i] for c in sto_c) / runs) for i in (0, 1))
    out.append(PatternScore(_majority(rates), "stochastic", statistics.fmean(accs),
                            statistics.fmean(c5 / max(m, 1) for _, c5, m in sto_c), c1_mean, c5_mean,
                            sto_c[0][2], top1_std=std, unit_rates=rates))
    out.append(PatternScore(_majority(rates), "ensemble", ens_c[0] / ens_c[2], ens_c[1] / ens_c[2], ens_c[0],
                            ens_c[1], ens_c[2], unit_rates=rates, passes=runs))
    return out


def _majority(rates: Sequence[float]) -> str:
    """The pattern a strategy mostly runs: a unit counts as skipped when it ran for < half the samples."""
    return str(SkipPattern(tuple(r < 0.5 for r in rates)))
