"""Pareto frontier and hypervolume of (cost, accuracy) points.

Both axes are normalised by the caller: cost as a fraction of the super-net (0..1, lower is
better), accuracy as top-1 (0..1, higher is better). The hypervolume is the area dominated by
the frontier inside the box cost in [0, 1], accuracy in [0, 1], with reference point
(cost=1, accuracy=0): a model whose every sub-network is as good as its super-net and free
scores 1.
"""

from __future__ import annotations

from typing import Sequence


def pareto_mask(costs: Sequence[float], accs: Sequence[float]) -> list[bool]:
    """True where no other point has cost <= and acc >= with at least one strict."""
    n = len(costs)
    mask = []
    for i in range(n):
        dominated = any(
            costs[j] <= costs[i] and accs[j] >= accs[i] and (costs[j] < costs[i] or accs[j] > accs[i]) for j in range(n)
        )
        mask.append(not dominated)
    return mask


def hypervolume(costs: Sequence[float], accs: Sequence[float], ref_cost: float = 1.0) -> float:
    """Area dominated by the points w.r.t. the reference (cost=ref_cost, acc=0)."""
    pts = sorted((c, a) for c, a in zip(costs, accs) if c <= ref_cost)
    area, best = 0.0, 0.0
    # sweep from the highest cost down: each slab [c_i, c_{i+1}) is covered by the best acc at cost <= c_i
    xs = [c for c, _ in pts] + [ref_cost]
    for i, (c, a) in enumerate(pts):
        best = max(best, a)
        area += (xs[i + 1] - c) * best
    return area
