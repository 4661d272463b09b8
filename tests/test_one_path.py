"""One evaluation path (issue: what the search optimizes): a trial's last-epoch metrics, its logged
frontier score and ``gatesearch select`` on its checkpoint agree, for every kind of candidate
(fixed patterns, Gated Depth's calibrated full network, probgates' inference strategies), with and
without per-candidate BN re-estimation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gatesearch.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from _training import one_thread, quick_cfg  # noqa: E402

_one_thread = pytest.fixture(autouse=True)(one_thread)

CASES = {  # case -> (method, config overrides)
    "adn": ("adn", {}),
    "gated_depth": ("gated_depth", {"method__gated_depth__p_schedule": "units"}),
    "probgates_logit": ("probgates", {"method__probgates__runs": 3}),
    "probgates_aig": ("probgates", {"method__probgates__runs": 3, "model__gate_head": "aig",
                                    "model__switchable_bn": False}),
}


def _score_by_hand(metrics: dict[str, float], k: int = 10) -> float:
    """docs/search.md's formula, written out: budgets evenly spaced from the cheapest cost to 1
    inclusive; each gets the best top-1 among candidates that cost no more."""
    names = [m[len("cost_"):] for m in metrics if m.startswith("cost_") and m != "cost_gated"]
    pts = [(metrics[f"cost_{n}"], metrics[f"top1_{n}"]) for n in names]
    low = min(c for c, _ in pts)
    budgets = [low + (1 - low) * i / (k - 1) for i in range(k)]
    return sum(max(a for c, a in pts if c <= b + 1e-9) for b in budgets) / k


@pytest.mark.parametrize("bn", [0, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_select_reproduces_the_trials_metrics(case: str, bn: int, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from gatesearch.tracking import MLflowReporter
    from gatesearch.train import fit

    method, extra = CASES[case]
    cfg = quick_cfg(str(tmp_path / "run"), method, train__epochs=1, train__max_steps_per_epoch=4,
                    data__train_subset=256, train__bn_reestimate_batches=bn, **extra)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reporter = MLflowReporter(uri, "one-path")
    result = fit(cfg, [reporter])
    metrics = result.metrics

    logged = MlflowClient(uri).get_run(reporter.run_id).data.metrics
    assert logged["frontier_score"] == pytest.approx(metrics["frontier_score"], abs=1e-12)
    assert logged["frontier_score"] == pytest.approx(_score_by_hand(logged), abs=1e-9)

    out = tmp_path / "menus"
    assert main(["select", "--checkpoint", str(result.checkpoint_path), "--device", "jetson", "--out", str(out)]) == 0
    menu = json.loads((out / "jetson-orin-nano" / "menu.json").read_text())
    assert menu["bn_mode"] == ("reestimated" if bn else "switchable" if cfg.model.gating == "stage"
                               and cfg.model.switchable_bn is not False else "plain")
    kinds = {e["strategy"] for e in menu["entries"]}
    if method == "gated_depth":
        assert "calibrated" in kinds  # the deployed full network is the calibrated one, in both places
    if method == "probgates":
        assert {"threshold:0.50", "always_on", "stochastic", "ensemble"} <= kinds
    for e in menu["entries"]:
        name = e["pattern"] if e["strategy"] in ("pattern", "calibrated") else e["strategy"].replace(":", "_")
        assert e["top1"] == pytest.approx(metrics[f"top1_{name}"], abs=1e-6), name
    assert menu["extras"]["frontier_score_on_score_cost"] == pytest.approx(metrics["frontier_score"], abs=1e-6)
