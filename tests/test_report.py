"""search/report.py: the parent run's comparison pieces, on hand-made summaries."""

from __future__ import annotations

from gatesearch.search import report
from gatesearch.search.params import Param


def _summary(n: int) -> dict:
    trials = []
    for i in range(n):
        lr = 0.01 * (i + 1)
        trials.append({"trial_id": f"id{i}", "name": f"t{i:03d}", "method": "adn" if i % 2 else "gated_depth",
                       "baseline": None, "state": "COMPLETE", "stop_reason": "finished", "epochs_done": 2,
                       "train_time_s": 1.0, "mlflow_run_id": f"r{i}",
                       "objectives": {"frontier_score": 0.5 + 4.0 * lr},  # only the learning rate matters
                       "config": {"optim.lr": lr, "method.name": "adn" if i % 2 else "gated_depth"}})
    return {"objective": [{"metric": "frontier_score", "mode": "max"}], "trials": trials}


PARAMS = [Param("method.name", "choice", choices=("adn", "gated_depth")), Param("optim.lr", "loguniform", low=0.005, high=0.2)]


def test_importances_rank_the_key_that_drives_the_objective_and_refuse_too_few_trials():
    found, reason = report.importances(_summary(8), PARAMS)
    assert reason == "" and set(found) == {"optim.lr", "method.name"}
    assert found["optim.lr"] > found["method.name"]
    none, why = report.importances(_summary(3), PARAMS)
    assert none == {} and "3 complete trial(s)" in why


def test_trials_table_has_one_row_per_trial_and_the_searched_columns():
    table = report.trials_table(_summary(3), ["method.name", "optim.lr"])
    assert table["trial"] == ["t000", "t001", "t002"] and table["optim.lr"] == [0.01, 0.02, 0.03]
    assert table["kind"] == ["searched"] * 3 and table["child_run_id"] == ["r0", "r1", "r2"]


def test_candidate_points_are_the_cost_and_top1_metrics_of_the_last_result():
    m = {"top1_FF": 0.9, "cost_FF": 1.0, "top1_TT": 0.7, "cost_TT": 0.5, "top1_gated": 0.8, "cost_gated": 0.7,
         "frontier_score": 0.8}
    assert report.candidate_points(m) == [(0.5, 0.7), (1.0, 0.9)]  # cost_gated repeats a strategy's own entry
