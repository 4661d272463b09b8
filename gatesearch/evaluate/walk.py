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
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from gatesearch.models import GatedResNet
from gatesearch.models.gated_resnet import skip_unit
from gatesearch.models.norm import UNIT_OFF, UNIT_ON
from gatesearch.parallel import summed_rows_
from gatesearch.patterns import SkipPattern


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
    """Scores from the counts, summed over the ranks first under data parallelism (each rank walked
    its shard of the split; every rank gets the whole split's scores)."""
    rows = [[int(c) for c in counts[p]] for p in patterns]
    summed_rows_(rows)
    out = []
    for p, (c1, c5, n) in zip(patterns, rows):
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
            _tally(counts, group, logits, y)

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
            _tally(counts, [p], model(x, p), y)
    return _to_scores(counts, patterns)


def _tally(counts: dict[SkipPattern, list[int]], group: Sequence[SkipPattern], logits: torch.Tensor,
           y: torch.Tensor) -> None:
    """Add one batch's top-1 / top-5 hits and size to every pattern of ``group`` (they share ``logits``)."""
    c1, c5 = _topk_correct(logits, y)
    for p in group:
        counts[p][0] += c1
        counts[p][1] += c5
        counts[p][2] += y.numel()


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
