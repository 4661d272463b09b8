"""selection/pareto.py: frontier, frontier score, menus (JSON and Parquet alike), pick, table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gatesearch.evaluate.frontier import frontier_score, pareto_mask
from gatesearch.selection.pareto import MENU_COLUMNS, build_menu, format_menu, pick, read_menu, write_menu


def test_pareto_mask() -> None:
    assert pareto_mask([1.0, 0.5, 0.5, 0.2], [0.9, 0.8, 0.7, 0.5]) == [True, True, False, True]


# The frontier score, written out by hand: k budgets b_i = c_min + (1 - c_min) * i / (k - 1) and the
# mean over them of the best top-1 among points with cost <= b_i (docs/search.md).


def test_frontier_score_by_hand() -> None:
    # costs 0.5 / 0.75 / 1.0, k = 3 budgets: 0.5 -> 0.80, 0.75 -> 0.85, 1.0 -> 0.90
    assert frontier_score([0.5, 0.75, 1.0], [0.80, 0.85, 0.90], k=3) == pytest.approx((0.80 + 0.85 + 0.90) / 3)
    # k = 5 budgets 0.5, 0.625, 0.75, 0.875, 1.0 -> 0.80, 0.80, 0.85, 0.85, 0.90
    assert frontier_score([0.5, 0.75, 1.0], [0.80, 0.85, 0.90], k=5) == pytest.approx(4.2 / 5)
    assert frontier_score([1.0], [0.9]) == pytest.approx(0.9)  # a lone super-net scores its top-1
    assert frontier_score([], []) == 0.0
    assert frontier_score([2.0], [0.9]) == 0.0  # nothing fits any budget <= the super-net's cost
    # a point costlier than the super-net (a 5-pass ensemble) adds nothing
    assert frontier_score([0.5, 1.0, 5.0], [0.8, 0.9, 0.99], k=3) == frontier_score([0.5, 1.0], [0.8, 0.9], k=3)


def test_frontier_score_values_the_super_net_and_the_base_net() -> None:
    costs = [0.65, 0.77, 0.88, 1.0]
    accs = [0.88, 0.89, 0.90, 0.91]
    s = frontier_score(costs, accs)
    assert frontier_score(costs, accs[:3] + [0.93]) > s  # a better super-net scores higher
    assert frontier_score(costs, [0.885] + accs[1:]) > s  # a better base-net too
    # the zero-width flaw of the reference-point hypervolume: a 94% super-net and a 10% one differ
    assert frontier_score(costs, accs[:3] + [0.94]) > frontier_score(costs, accs[:3] + [0.10])


def test_frontier_score_ignores_dominated_points() -> None:
    costs, accs = [0.65, 0.88, 1.0], [0.88, 0.90, 0.91]
    dominated = ([0.9], [0.85])  # costlier than 0.88 and less accurate
    assert frontier_score(costs + dominated[0], accs + dominated[1]) == frontier_score(costs, accs)


def test_frontier_score_ranks_an_adaptive_network_above_both_plain_networks() -> None:
    """The issue's constructed tables: 8 patterns of a 3-unit stage-gated ResNet-20 (costs as its MACs)."""
    costs = [1.0, 0.884, 0.884, 0.767, 0.884, 0.767, 0.767, 0.651]  # FFF FFT FTF FTT TFF TFT TTF TTT
    adaptive = [0.92, 0.91, 0.91, 0.90, 0.91, 0.90, 0.90, 0.89]
    plain_full = [0.925, 0.30, 0.25, 0.20, 0.28, 0.22, 0.18, 0.15]
    plain_base = [0.30, 0.25, 0.22, 0.20, 0.21, 0.19, 0.18, 0.895]
    a, f, b = (frontier_score(costs, t) for t in (adaptive, plain_full, plain_base))
    assert a > f and a > b
    assert b == pytest.approx(0.895)  # the base-net is the best point within every budget
    # plain full: budgets 0.651 + 0.349 i / 9 = 0.651 0.690 0.729 | 0.767 0.806 0.845 0.884- | 0.922 0.961 | 1.0
    # get TTT 0.15 x3, the best at 0.767 (TFT 0.22) x4, the best at 0.884 (FFT 0.30) x2, the super-net 0.925 x1
    assert f == pytest.approx((3 * 0.15 + 4 * 0.22 + 2 * 0.30 + 0.925) / 10)


def test_frontier_score_is_scale_free_in_the_cost_axis() -> None:
    """Costs are fractions of the super-net's, so a block-gated model (cheapest 0.19) and a
    stage-gated one (cheapest 0.65) are both scored over their own range on the same scale."""
    assert frontier_score([0.19, 1.0], [0.5, 0.9], k=2) == pytest.approx(0.7)
    assert frontier_score([0.65, 1.0], [0.5, 0.9], k=2) == pytest.approx(0.7)


def _entries() -> list[dict]:
    rows = []
    for pattern, top1, lat in [("FF", 0.90, 2.0), ("FT", 0.85, 1.5), ("TF", 0.80, 1.6), ("TT", 0.70, 1.0)]:
        rows.append({"pattern": pattern, "strategy": "pattern", "top1": top1, "top5": 0.99, "top1_std": 0.0,
                     "macs": int(lat * 1e6), "params": 1000, "bytes": 4000, "latency_ms": lat, "latency_p90_ms": lat,
                     "latency_source": "model", "activation": pattern.count("F") / 2,
                     "unit_rates": [float(c == "F") for c in pattern]})
    return rows


def _menu():
    return build_menu(_entries(), model="resnet20", dataset="digits", device="jetson-orin-nano", checkpoint="c.pt",
                      bn_mode="switchable", search="exhaustive", batch=1)


def test_build_menu_flags_and_frontier_score() -> None:
    menu = _menu()
    flags = {e["pattern"]: e["pareto"] for e in menu.entries}
    assert flags == {"FF": True, "FT": True, "TF": False, "TT": True}
    assert menu.latency_source == "model"
    # latency / super's (2.0): FF 1.0 0.90, FT 0.75 0.85, TF 0.8 0.80, TT 0.5 0.70; budgets 0.5 + 0.5 i / 9
    budgets = [0.5 + 0.5 * i / 9 for i in range(10)]
    want = sum(0.90 if b >= 1.0 - 1e-12 else 0.85 if b >= 0.75 else 0.70 for b in budgets) / 10
    assert menu.frontier_score == pytest.approx(want)
    assert menu.top1_mean == pytest.approx(0.8125)
    assert menu.top1_std > 0


def test_pick() -> None:
    menu = _menu()
    assert pick(menu, 1.55)["pattern"] == "FT"
    assert pick(menu, 10)["pattern"] == "FF"
    assert pick(menu, 0.5) is None


def test_json_and_parquet_same_columns(tmp_path: Path) -> None:
    menu = _menu()
    jpath, ppath = write_menu(menu, tmp_path)
    record = json.loads(jpath.read_text())
    assert record["device"] == "jetson-orin-nano" and record["bn_mode"] == "switchable"
    assert {"model", "dataset", "checkpoint", "latency_source", "entries", "frontier_score"} <= set(record)
    table = pq.read_table(ppath)
    assert tuple(table.column_names) == MENU_COLUMNS
    assert all(tuple(e) == MENU_COLUMNS for e in record["entries"])
    assert table.to_pylist() == record["entries"]
    for path in (jpath, ppath):
        back = read_menu(path)
        assert back.entries == menu.entries and back.frontier_score == menu.frontier_score


def test_format_menu_marks_pick() -> None:
    text = format_menu(_menu(), budget_ms=1.55)
    assert "> FT" in text and "* FF" in text and "pick FT" in text


def test_plots_written(tmp_path: Path) -> None:
    from gatesearch.selection.plots import save_figures

    entries = _entries() + [{**_entries()[0], "strategy": "stochastic", "top1_std": 0.01, "pareto": False,
                             "unit_rates": [0.9, 0.1], "activation": 0.5}]
    menus = [build_menu(entries, model="resnet20", dataset="digits", device=d, checkpoint="c.pt", bn_mode="plain",
                        search="exhaustive", batch=1) for d in ("jetson-orin-nano", "h100")]
    paths = save_figures(menus, tmp_path)
    assert set(paths) == {"pareto.png", "top1_distribution.png", "gate_rates.png"}
    assert all(p.stat().st_size > 1000 for p in paths.values())


def test_pareto_mask_matches_brute_force() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 30)
        costs = [rng.choice([0.1, 0.2, 0.3, 0.5, 1.0]) for _ in range(n)]
        accs = [rng.choice([0.5, 0.6, 0.7, 0.9]) for _ in range(n)]
        brute = [not any(costs[j] <= costs[i] and accs[j] >= accs[i] and (costs[j] < costs[i] or accs[j] > accs[i])
                         for j in range(n)) for i in range(n)]
        assert pareto_mask(costs, accs) == brute
