"""selection/pareto.py: frontier, hypervolume, menus (JSON and Parquet alike), pick, table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gatesearch.selection.pareto import (
    MENU_COLUMNS,
    build_menu,
    format_menu,
    hypervolume,
    pareto_mask,
    pick,
    read_menu,
    write_menu,
)


def test_pareto_mask_and_hypervolume() -> None:
    assert pareto_mask([1.0, 0.5, 0.5, 0.2], [0.9, 0.8, 0.7, 0.5]) == [True, True, False, True]
    assert hypervolume([1.0], [1.0]) == pytest.approx(0.0)
    assert hypervolume([0.0], [1.0]) == pytest.approx(1.0)
    assert hypervolume([0.5, 1.0], [0.5, 1.0]) == pytest.approx(0.25)


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


def test_build_menu_flags_and_hypervolume() -> None:
    menu = _menu()
    flags = {e["pattern"]: e["pareto"] for e in menu.entries}
    assert flags == {"FF": True, "FT": True, "TF": False, "TT": True}
    assert menu.latency_source == "model"
    lat = [e["latency_ms"] / 2.0 for e in menu.entries]
    assert menu.hypervolume == pytest.approx(hypervolume(lat, [e["top1"] for e in menu.entries]))
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
    assert {"model", "dataset", "checkpoint", "latency_source", "entries", "hypervolume"} <= set(record)
    table = pq.read_table(ppath)
    assert tuple(table.column_names) == MENU_COLUMNS
    assert all(tuple(e) == MENU_COLUMNS for e in record["entries"])
    assert table.to_pylist() == record["entries"]
    for path in (jpath, ppath):
        back = read_menu(path)
        assert back.entries == menu.entries and back.hypervolume == menu.hypervolume


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
