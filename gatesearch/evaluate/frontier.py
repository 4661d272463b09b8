"""Pareto frontier and the frontier score of (cost, accuracy) points.

Both axes are normalised by the caller: cost as a fraction of the super-net's (MACs or modelled
latency; the super-net is 1, lower is better), accuracy as top-1 (0..1, higher is better).

The **frontier score** (``frontier_score``) is what a study maximises and what a menu reports: the
mean, over ``k`` budgets spaced evenly from the cheapest point's cost to the super-net's cost 1
*inclusive*, of the top-1 of the most accurate point that fits each budget. It reads as "the
accuracy a user gets on average when the deployment budget is anywhere in the model's range", and
every sub-network counts: the super-net decides the last budget, the cheapest point the first, a
dominated point none (``docs/search.md`` gives the formula, a worked example, and why it replaced
the reference-point hypervolume, which gave the super-net's accuracy zero weight).
"""

from __future__ import annotations

from typing import Sequence

#: Budgets the frontier score averages over (evenly spaced, both ends included).
FRONTIER_BUDGETS = 10
#: Costs within this of a budget fit it (costs are ratios computed in floating point).
_COST_TOL = 1e-9


def pareto_mask(costs: Sequence[float], accs: Sequence[float]) -> list[bool]:
    """True where no other point has cost <= and acc >= with at least one strict.

    O(n log n): a point survives iff its accuracy beats every strictly cheaper point and is the
    best among points of equal cost (equal points do not dominate each other).
    """
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    mask = [False] * len(costs)
    best_cheaper = float("-inf")
    k = 0
    while k < len(order):
        group = [order[k]]
        while k + len(group) < len(order) and costs[order[k + len(group)]] == costs[order[k]]:
            group.append(order[k + len(group)])
        top = max(accs[i] for i in group)
        for i in group:
            mask[i] = accs[i] > best_cheaper and accs[i] == top
        best_cheaper = max(best_cheaper, top)
        k += len(group)
    return mask


def frontier_score(costs: Sequence[float], accs: Sequence[float], k: int = FRONTIER_BUDGETS) -> float:
    """Mean top-1 of the best point within each of ``k`` budgets evenly spaced over [cheapest cost, 1].

    ``costs``: each point's cost relative to the super-net (the super-net is 1.0; points costlier
    than 1, e.g. a 5-pass ensemble, fit no budget); ``accs``: their top-1 in [0, 1]. Budget ``i`` of
    ``k`` is ``b_i = c_min + (1 - c_min) * i / (k - 1)``; the score is ``mean_i max{acc_j : cost_j <= b_i}``.
    A budget nothing fits counts 0 (only possible when no point costs <= 1). Empty input scores 0.
    """
    if k < 2:
        raise ValueError(f"frontier_score needs k >= 2 budgets, got {k}")
    pts = sorted((float(c), float(a)) for c, a in zip(costs, accs))
    if not pts or pts[0][0] > 1.0 + _COST_TOL:
        return 0.0
    low = pts[0][0]
    total, best, j = 0.0, 0.0, 0
    for i in range(k):
        budget = 1.0 if i == k - 1 else low + (1.0 - low) * i / (k - 1)
        while j < len(pts) and pts[j][0] <= budget + _COST_TOL:
            best = max(best, pts[j][1])
            j += 1
        total += best
    return total / k


# ----------------------------------------------------------------- menus
# A menu: for one trained model and one device, every scored candidate with the Pareto set
# (top-1 vs latency) flagged. JSON and Parquet carry the same entry columns; the Parquet file
# keeps the menu-level fields (model, device, frontier_score, ...) in its schema metadata.

#: Entry columns, in order. ``latency_ms`` is at ``batch`` (menu field); ``bytes`` are weights +
