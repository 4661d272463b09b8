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


def _columns(view: dict, kind: str) -> list[str]:
    return [c[len(kind) + 2:-1] for c in view["selectedColumns"] if c.startswith(f"{kind}.`")]


def test_study_view_opens_on_the_study_trials_best_first_with_the_objective_and_the_searched_values():
    params = [*PARAMS, Param("method.adn.alpha", "uniform", low=0.2, high=0.9, when=(("method.name", ("adn",)),))]
    view = report.study_view("abc123", [("frontier_score", "max"), ("top1_base", "max")], params)
    assert view["searchFilter"] == "tags.`mlflow.parentRunId` = 'abc123' and tags.`gatesearch.kind` = 'trial'"
    assert view["orderByKey"] == "metrics.`frontier_score`" and view["orderByAsc"] is False  # best first
    assert view["selectedColumns"][:2] == ["metrics.`frontier_score`", "metrics.`top1_base`"]  # the objectives first
    # a conditional key is left out: its column would show the config default where the trial did not draw it
    assert _columns(view, "params") == ["method.name", "optim.lr"]
    assert {"gatesearch.stop_reason", "gatesearch.baseline"} <= set(_columns(view, "tags"))
    assert "Description" in _columns(view, "attributes")
    charts = {c["type"]: c for c in view["compareRunCharts"]}
    assert set(charts) == {"BAR", "LINE", "PARALLEL"}
    assert charts["PARALLEL"]["selectedParams"] == ["method.name", "optim.lr"]
    assert charts["PARALLEL"]["selectedMetrics"] == ["frontier_score", "top1_base"]
    assert charts["BAR"]["metricKey"] == charts["LINE"]["metricKey"] == "frontier_score"
    # the study's charts come first and open; MLflow's one chart per logged metric stays, folded
    first, *rest = view["compareRunSections"]
    assert first["display"] and {c["metricSectionId"] for c in view["compareRunCharts"]} == {first["uuid"]}
    assert [s["name"] for s in rest] == ["Model metrics", "System metrics"] and not any(s["display"] for s in rest)
    assert report.study_view("abc123", [("val_loss", "min")], PARAMS)["orderByAsc"] is True


def test_trial_description_names_the_drawn_values_the_objective_and_the_stop_reason():
    t = {**_summary(1)["trials"][0], "stop_reason": "stopped early by ASHA at epoch 1"}
    t["config"]["optim.lr"] = 0.0123456
    line = report.trial_description(t, ["method.name", "method.adn.alpha", "optim.lr"], "frontier_score")
    assert line == ("searched: method.name=gated_depth, optim.lr=0.01235; frontier_score 0.5400; "
                    "stopped early by ASHA at epoch 1")
    base = {**t, "baseline": "adn", "objectives": {}, "config": {}, "stop_reason": None, "state": "ERROR"}
    assert report.trial_description(base, ["optim.lr"], "frontier_score") == (
        "paper baseline adn: no searched key; no frontier_score; ERROR")
