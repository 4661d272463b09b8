"""stats.py: one standard deviation for every reported ``*_std``, and its callers use it."""

from __future__ import annotations

import pytest

from gatesearch import evaluate as evaluate_module
from gatesearch.evaluate import EvalResult, evaluate_stochastic
from gatesearch.selection.pareto import build_menu
from gatesearch.stats import sample_std


def test_sample_std_written_out():
    # mean 0.6; squared deviations 0.01 + 0.01 + 0 = 0.02; / (n - 1) = 0.01; sqrt -> 0.1
    assert sample_std([0.5, 0.7, 0.6]) == pytest.approx(0.1)
    assert sample_std([0.42]) == 0.0 and sample_std([]) == 0.0


def test_stochastic_evaluation_reports_the_sample_std(monkeypatch: pytest.MonkeyPatch):
    runs = iter([0.5, 0.7, 0.6])
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: EvalResult(next(runs), 1.0, 0, 0, 10))
    mean, std = evaluate_stochastic(None, [], None, "cpu", runs=3)
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)


def test_menu_std_over_patterns_is_the_sample_std():
    rows = [{"pattern": p, "strategy": "pattern", "top1": a, "latency_ms": 1.0 + i, "latency_source": "model"}
            for i, (p, a) in enumerate([("FF", 0.5), ("FT", 0.7), ("TF", 0.6)])]
    menu = build_menu(rows, model="m", dataset="d", device="x", checkpoint="c", bn_mode="plain", search="exhaustive",
                      batch=1)
    assert menu.top1_std == pytest.approx(0.1)
