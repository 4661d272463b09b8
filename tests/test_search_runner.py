"""Search runner on a local Ray (one session for the module): a small study's MLflow layout,
injected faults (raise, NaN, a dying worker) and resuming an interrupted study."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
from _interrupt import ROOT, interrupt_search  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from gatesearch.errors import UserError  # noqa: E402
from gatesearch.search.runner import SearchOptions, describe, run_search  # noqa: E402
from gatesearch.search.trainable import FAULT_ENV  # noqa: E402

# These tests drive real Ray worker processes and react to them by the clock (Ctrl+C once a trial
# has finished, a worker killed after its first checkpoint): one rerun, reported as "rerun" in
# pytest's summary, absorbs a slow process start on a loaded 2-core machine; a real failure fails twice.
RAY_TIMING = pytest.mark.flaky(reruns=1, reruns_delay=2)


def tiny_space(tmp_path: Path, name: str, trials: int = 4, epochs: int = 2, grace: int = 1,
               objective: object = None, devices: tuple[str, ...] = (), baselines: bool = True,
               reeval: dict | None = None, register: str | None = None, time_budget_s: float | None = None) -> Path:
    """Two methods: with baselines, trials 0 and 1 are the adn and gated_depth paper recipes."""
    space = {
        "study": {"name": name, "objective": objective or {"metric": "top1_super", "mode": "max"},
                  "budget": {"trials": trials, "epochs": epochs,
                             **({"time_budget_s": time_budget_s} if time_budget_s else {})}, "max_concurrent_trials": 2,
                  "devices": list(devices), "baselines": baselines,
                  "resources": {"cpu": 1}, "max_failures": 1, "asha": {"grace_period": grace, "reduction_factor": 2},
                  **({"reeval": reeval} if reeval else {}), **({"register": register} if register else {})},
        "fixed": {"data.name": "digits", "data.train_subset": 192, "data.batch_size": 64, "data.augment": False,
                  "data.eval_batch_size": 256, "model.name": "resnet20", "train.device": "cpu",
                  "train.max_steps_per_epoch": 2, "train.log_every": 1000, "tracking.experiment": name},
        "search": {"method.name": {"choice": ["adn", "gated_depth"]},
                   "optim.lr": {"loguniform": [0.01, 0.1]},
                   "method.adn.alpha": {"uniform": [0.3, 0.9], "when": {"method.name": "adn"}},
                   "method.gated_depth.k": {"int": [2, 10], "when": {"method.name": "gated_depth"}}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def optuna_states(study_dir: Path) -> dict[str, str]:
    """Tune trial id -> the state its Optuna trial ended in, from the searcher state Tune saved."""
    (path,) = study_dir.glob("searcher-state-*.pkl")
    saved = pickle.loads(path.read_bytes())
    trials = saved["_ot_study"].trials
    return {tid: trials[t.number].state.name for tid, t in saved["_ot_trials"].items()}


def child_runs(uri: str, summary: dict) -> list:
    client = MlflowClient(uri)
    return client.search_runs([summary["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")


def interrupt_once(space: Path, uri: str, tmp_path: Path, address: str, run_filter: str, timeout_s: float,
                   sig: int = signal.SIGINT) -> list:
    """``gatesearch search`` in a subprocess (trials 1-3 slowed), Ctrl+C (or ``sig``) once a child run matching
    ``run_filter`` has FINISHED; asserts it exits 130 (state saved) and returns those finished runs."""
    parent_file = tmp_path / "rr" / Path(space).stem / "mlflow_parent.json"

    def finished() -> list:
        if not parent_file.is_file():
            return []
        ids = json.loads(parent_file.read_text())
        runs = MlflowClient(uri).search_runs([ids["experiment_id"]], filter_string=(
            f"tags.`mlflow.parentRunId` = '{ids['parent_run_id']}'" + run_filter))
        return [r for r in runs if r.info.status == "FINISHED"]

    return interrupt_search(space, uri, tmp_path, address, "slow@1,slow@2,slow@3", finished, timeout_s, sig)


@RAY_TIMING
def test_small_study_has_parent_and_child_runs(local_ray, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    summary = run_search(SearchOptions(space=str(tiny_space(tmp_path, "small", devices=("jetson",), register="small")),
                                       tracking_uri=uri, storage=str(tmp_path / "rr"), verbose=0))
    assert summary["n_trials"] == 4 and summary["n_error"] == 0 and summary["n_complete"] >= 1
    client = MlflowClient(uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["method"] == "searched" and parent.data.tags["dataset"] == "digits"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"small.yaml", "summary.json",
                                                                          "trials_table.json"}
    # study.register: the best trial's bundle for each device, loadable by alias
    import mlflow

    mlflow.set_tracking_uri(uri)
    version = client.get_model_version_by_alias("small", "jetson-orin-nano")
    assert version.run_id == summary["best"]["mlflow_run_id"]
    model = mlflow.pyfunc.load_model("models:/small@jetson-orin-nano")
    assert model.predict(__import__("numpy").zeros((2, 1, 8, 8), "float32"), params={"budget_ms": 1e6}).shape == (2, 10)
    # MLflow 3's UI opens this experiment on its training runs, not on the GenAI overview
    assert client.get_experiment(summary["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"
    # the parent run is where trials are compared: frontiers overlaid, curves, the trials table, importances
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")} >= {
        "comparison/frontiers.png", "comparison/objective_per_epoch.png", "comparison/importances.json"}
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "trials_table.json", str(tmp_path))).read_text())
    assert len(table["data"]) == 4 and {"stop_reason", "child_run_id", "optim.lr", "method.name"} <= set(table["columns"])
    assert {"path": "trials_table.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    imp = json.loads(Path(client.download_artifacts(parent.info.run_id, "comparison/importances.json",
                                                    str(tmp_path))).read_text())
    assert imp["importances"] or "complete trial" in imp["reason"]  # 4 trials: few complete, so usually a reason
    children = child_runs(uri, summary)
    assert len(children) == 4
    assert len({c.data.tags["gatesearch.trial_id"] for c in children}) == 4
    # every child run names its data: one MLflow dataset input per split, digests equal across trials
    for c in children:
        inputs = {i.tags[0].value: i.dataset for i in client.get_run(c.info.run_id).inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation", "test"}
        assert inputs["training"].name == "digits-training" and len(inputs["training"].digest) == 32
        assert json.loads(inputs["training"].profile)["num_rows"] == 192  # data.train_subset
    digests = {client.get_run(c.info.run_id).inputs.dataset_inputs[0].dataset.digest for c in children}
    assert len(digests) == 1
    for c in children:
        assert c.data.tags["dataset"] == "digits" and c.data.tags["model"] == "resnet20"
        assert c.data.tags["method"] == c.data.params["method.name"]
        assert c.data.params["train.epochs"] == "2" and "optim.lr" in c.data.params
        # a trial ASHA stopped ends FINISHED with its reason (the scheduler's decision is no failure)
        t = next(t for t in summary["trials"] if t["mlflow_run_id"] == c.info.run_id)
        assert c.info.status == "FINISHED" and c.data.tags["gatesearch.stop_reason"] == t["stop_reason"]
        assert t["stop_reason"] == ("finished" if t["state"] == "COMPLETE" else
                                    f"stopped early by ASHA at epoch {t['epochs_done']}")
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "top1_super")]
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 2
        # its description: the values it drew, its objective and why it stopped (the UI's Description column)
        assert c.data.tags["mlflow.note.content"].endswith(f"; {t['stop_reason']}")
        assert f"optim.lr={float(c.data.params['optim.lr']):.4g}" in c.data.tags["mlflow.note.content"]
    # the UI's first screen: a saved view in the experiment (the runs page's "Views" menu) of this study's trials,
    # best first, objective and searched values as columns; read back as MLflow's UI reads it
    saved = json.loads(client.get_experiment(summary["experiment_id"]).tags[f"mlflow.sharedViewState.{parent.info.run_id}"])
    assert saved["name"] == "study small: trials by top1_super" and isinstance(saved["createdAt"], int)
    view = json.loads(saved["state"])
    shown = client.search_runs([summary["experiment_id"]], filter_string=view["searchFilter"])
    assert sorted(r.info.run_id for r in shown) == sorted(c.info.run_id for c in children)
    assert view["orderByKey"] == "metrics.`top1_super`" and view["orderByAsc"] is False
    params = [c[len("params.`"):-1] for c in view["selectedColumns"] if c.startswith("params.")]
    assert params and all(set(params) <= set(r.data.params) for r in shown)
    assert all("top1_super" in r.data.metrics for r in shown)
    # the objective on the parent too (the study's best), so the parent's row in the default runs list shows it
    assert client.get_run(parent.info.run_id).data.metrics["top1_super"] == summary["best"]["objectives"]["top1_super"]
    assert f"viewStateShareKey={parent.info.run_id}&workflowType=machine_learning" in describe(summary)
    best = json.loads((tmp_path / "rr" / "small" / "best.json").read_text())
    assert best["mlflow_run_id"] == parent.data.tags["gatesearch.best_run_id"]
    assert Path(best["checkpoint"]).is_file()
    best_run = client.get_run(best["mlflow_run_id"])
    assert best_run.data.tags["gatesearch.full_budget"] == "True"
    assert [a.path for a in client.list_artifacts(best_run.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    # ASHA-stopped trials never count as the best
    assert all(t["state"] == "COMPLETE" for t in summary["pareto"])
    # the two paper baselines ran first, to the full budget, tagged; Optuna saw stopped trials as pruned
    paper = {c.data.tags["gatesearch.baseline"]: c for c in children if "gatesearch.baseline" in c.data.tags}
    assert sorted(paper) == ["adn", "gated_depth"]
    assert {c.data.tags["gatesearch.trial_index"] for c in paper.values()} == {"0", "1"}
    assert paper["adn"].data.params["method.adn.alpha"] == "0.5" and paper["gated_depth"].data.params[
        "method.gated_depth.k"] == "10" and paper["gated_depth"].data.params["method.gated_depth.p_max"] == "0.9"
    assert all(c.info.status == "FINISHED" for c in paper.values())
    states = optuna_states(tmp_path / "rr" / "small")
    assert {t["trial_id"]: {"COMPLETE": "COMPLETE", "STOPPED": "PRUNED"}[t["state"]] for t in summary["trials"]} \
        == states
    (row,) = summary["vs_baselines"]
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    best_paper = max((t for t in complete if t["baseline"]), key=lambda t: t["objectives"]["top1_super"])
    assert row["best_baseline"] == best_paper["objectives"]["top1_super"]
    assert row["best_baseline_method"] == best_paper["baseline"]
    if row["best_searched"] is not None:
        assert row["difference"] == pytest.approx(row["best_searched"] - row["best_baseline"])
        assert parent.data.metrics["baseline_difference_top1_super"] == pytest.approx(row["difference"])
    assert parent.data.metrics["best_baseline_top1_super"] == pytest.approx(row["best_baseline"])
    assert parent.data.tags["gatesearch.best_baseline_run_id.top1_super"] == best_paper["mlflow_run_id"]
    assert "best paper baseline " + best_paper["baseline"] in describe(summary)
    # the selector ran for the best trial: menus on disk and in its MLflow run (DESIGN step 5)
    menu_dir = Path(summary["menus"][best["trial_id"]])
    menu = json.loads((menu_dir / "jetson-orin-nano" / "menu.json").read_text())
    assert menu["device"] == "jetson-orin-nano" and len(menu["entries"]) == 8
    assert (menu_dir / "jetson-orin-nano" / "menu.parquet").is_file()
    assert "select_jetson_orin_nano_frontier_score" in client.get_run(best["mlflow_run_id"]).data.metrics
    # the study renderer (benchmarks/render_study.py) reads this real summary and its MLflow store
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_study.py"), "--summary",
                          str(tmp_path / "rr" / "small" / "summary.json"), "--results-dir", str(tmp_path / "studies"),
                          "--doc", str(tmp_path / "R.md")], capture_output=True, text=True, timeout=300, check=True).stdout
    rec = json.loads((tmp_path / "studies" / "small.json").read_text())
    assert len(rec["trials"]) == 4 and f"`{best['trial_id']}` **best**" in out
    for c in children:  # every child's name and status, read from the store, is in the MLflow table
        assert f"`{c.info.run_name}` (`{c.info.run_id}`) | {c.info.status} |" in out


@RAY_TIMING
def test_faults_error_a_trial_and_a_dead_worker_resumes(local_ray, tmp_path, monkeypatch):
    # trial 0 raises, trial 1 diverges (NaN), trial 2's worker dies once after its first checkpoint
    monkeypatch.setenv(FAULT_ENV, "raise@0,nan@1,exit@2")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # multi-objective (NSGA-II, no ASHA): errored trials must stay off the Pareto set
    space = tiny_space(tmp_path, "faults", trials=4, epochs=2,
                       objective=[{"metric": "top1_super", "mode": "max"}, {"metric": "top1_base", "mode": "max"}])
    summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"), verbose=0))
    by_index = {}
    client = MlflowClient(uri)
    for run in child_runs(uri, summary):
        by_index[int(run.data.tags["gatesearch.trial_index"])] = run
    assert sorted(by_index) == [0, 1, 2, 3]  # one run per trial, even for the retried one
    states = {t["trial_id"]: t["state"] for t in summary["trials"]}
    for i, expect in ((0, "InjectedFault"), (1, "diverged")):
        run = by_index[i]
        assert run.info.status == "FAILED"
        assert expect in run.data.tags["gatesearch.error"]
        assert states[run.data.tags["gatesearch.trial_id"]] == "ERROR"
    died = by_index[2]
    assert (tmp_path / "rr" / "faults" / "faults" / f"exit-{died.data.tags['gatesearch.trial_id']}").is_file()
    assert died.info.status == "FINISHED" and states[died.data.tags["gatesearch.trial_id"]] == "COMPLETE"
    steps = [m.step for m in client.get_metric_history(died.info.run_id, "train_loss")]
    assert steps[-1] == 1 and set(steps) == {0, 1}
    assert summary["n_error"] == 2 and summary["best"] is not None  # the study went on
    assert {tid: s for tid, s in optuna_states(tmp_path / "rr" / "faults").items() if states[tid] == "ERROR"} \
        == {tid: "FAIL" for tid, s in states.items() if s == "ERROR"}
    assert summary["pareto"] and all(t["state"] == "COMPLETE" for t in summary["pareto"])


@RAY_TIMING
def test_interrupted_study_resumes_without_redoing_or_duplicating(local_ray, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = tiny_space(tmp_path, "resume", trials=4, epochs=3, grace=3)
    # trials 1-3 are slowed down, so Ctrl+C lands while they run, not after a fast study has finished
    finished = interrupt_once(space, uri, tmp_path, local_ray, "", timeout_s=120)
    history_before = {r.info.run_id: len(MlflowClient(uri).get_metric_history(r.info.run_id, "train_loss"))
                      for r in finished}

    summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"),
                                       resume=True, verbose=0))
    assert not summary["interrupted"] and summary["n_trials"] == 4 and summary["n_complete"] == 4
    runs = child_runs(uri, summary)
    assert len(runs) == 4 and len({r.data.tags["gatesearch.trial_id"] for r in runs}) == 4
    # the resumed searcher did not enqueue the paper baselines a second time
    assert sorted(r.data.tags.get("gatesearch.baseline", "-") for r in runs) == ["-", "-", "adn", "gated_depth"]
    client = MlflowClient(uri)
    for run_id, n in history_before.items():  # finished trials were not trained again
        assert len(client.get_metric_history(run_id, "train_loss")) == n == 3
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"


def test_pareto_set_holds_only_full_budget_trials(tmp_path):
    from types import SimpleNamespace

    from gatesearch.search.runner import summarize
    from gatesearch.search.space import parse

    space = parse(yaml.safe_load(tiny_space(tmp_path, "p", epochs=3, objective=[
        {"metric": "top1_super", "mode": "max"}, {"metric": "top1_base", "mode": "max"}]).read_text()))

    def result(tid: str, done: int, sup: float, base: float, error: Exception | None = None) -> SimpleNamespace:
        metrics = {"trial_id": tid, "epochs_done": done, "top1_super": sup, "top1_base": base, "mlflow_run_id": tid}
        return SimpleNamespace(metrics=metrics, checkpoint=None, error=error, path=f"/x/t000_{tid}", config={})

    results = [result("a", 3, 0.9, 0.5), result("b", 3, 0.8, 0.7), result("c", 3, 0.7, 0.6),  # c: dominated by b
               result("d", 1, 0.99, 0.99),  # stopped early: never on the set however good
               result("e", 2, 0.95, 0.95, RuntimeError("boom"))]
    summary = summarize(space, results, tmp_path)
    assert [t["trial_id"] for t in summary["pareto"]] == ["a", "b"]
    assert {t["trial_id"]: t["state"] for t in summary["trials"]} == {
        "a": "COMPLETE", "b": "COMPLETE", "c": "COMPLETE", "d": "STOPPED", "e": "ERROR"}


def test_summary_lists_trials_in_study_order_whatever_order_tune_gives(tmp_path):
    from types import SimpleNamespace

    from gatesearch.search.runner import summarize
    from gatesearch.search.space import parse

    space = parse(yaml.safe_load(tiny_space(tmp_path, "o", epochs=3).read_text()))
    # a restored experiment's ResultGrid came back newest first (the CPU study of 2026-12-06)
    results = [SimpleNamespace(metrics={"trial_id": tid, "epochs_done": 3, "top1_super": 0.5}, checkpoint=None,
                               error=None, path=f"/x/{name}_{tid}", config={})
               for name, tid in (("t002", "c"), ("t010", "k"), ("t000", "a"), ("t001", "b"))]
    assert [t["name"] for t in summarize(space, results, tmp_path)["trials"]] == ["t000", "t001", "t002", "t010"]


def test_summary_compares_the_best_searched_trial_with_the_best_full_budget_baseline(tmp_path):
    from types import SimpleNamespace

    from gatesearch.search.baselines import TRIAL_KEY
    from gatesearch.search.runner import summarize
    from gatesearch.search.space import parse

    space = parse(yaml.safe_load(tiny_space(tmp_path, "b", epochs=3).read_text()))

    def result(tid: str, done: int, sup: float, baseline: str | None = None) -> SimpleNamespace:
        metrics = {"trial_id": tid, "epochs_done": done, "top1_super": sup, "mlflow_run_id": f"run-{tid}"}
        # a baseline's Tune config: what StudySearch's suggest returns for it (see test_search_algorithms)
        paper = next((b for b in space.baselines if b.method == baseline), None)
        config = {"method.name": "adn"} if paper is None else {**paper.config(space.fixed), TRIAL_KEY: baseline}
        return SimpleNamespace(metrics=metrics, checkpoint=None, error=None, path=f"/x/t000_{tid}", config=config)

    results = [result("p1", 3, 0.70, "adn"), result("p2", 1, 0.95, "gated_depth"),  # p2 cut short: not comparable
               result("a", 3, 0.80), result("b", 1, 0.99)]
    summary = summarize(space, results, tmp_path)
    assert summary["baselines"] == ["adn", "gated_depth"]
    assert [t["baseline"] for t in summary["trials"]] == ["adn", "gated_depth", None, None]
    assert summary["trials"][0]["config"]["method.adn.feature_kl"] is True  # the recipe's unsearched keys shown
    (row,) = summary["vs_baselines"]
    assert row == {"metric": "top1_super", "mode": "max", "best_searched": 0.80, "best_searched_trial_id": "a",
                   "best_baseline": 0.70, "best_baseline_method": "adn", "best_baseline_trial_id": "p1",
                   "best_baseline_run_id": "run-p1", "difference": pytest.approx(0.10)}
    summary |= {"wall_time_s": 1.0, "tracking_uri": "sqlite:///x.db", "parent_run_id": "p", "experiment_id": "1",
                "interrupted": False}
    text = describe(summary)
    assert "paper baselines: adn top1_super=0.7000; gated_depth top1_super=0.9500 (STOPPED)" in text
    # a single-run difference is printed as what it is, never as a win (issue #24), and the study says it
    # has no re-evaluation
    assert ("top1_super (max): best searched trial 0.8000 (trial a) vs best paper baseline adn 0.7000 (trial p1), "
            "single-run difference +0.1000 (one seed each: not a verdict)") in text
    assert "verdict: single runs: no interval (no study.reeval), so no difference is a verdict" in text


# ----------------------------------------------------------------- re-evaluation (study.reeval)

#: A trainable whose result is known per (recipe, seed): the adn paper baseline scores 0.70 + 0.01 * seed,
#: the gated_depth one 0.60, a searched trial the adn baseline plus DELTA[study](seed). So the paired
#: differences at seeds 1..3 are known: "same" 0.01, 0.02, 0.03 (interval [-0.0048, +0.0448], no
#: difference); "better" 0.11, 0.12, 0.13 (interval [0.0952, 0.1448], better).
DELTA = {"reeval_same": lambda seed: 0.01 * seed, "reeval_better": lambda seed: 0.10 + 0.01 * seed}


def known_trainable(config: dict, ctx) -> None:
    from ray import tune

    from gatesearch.search.baselines import TRIAL_KEY
    from gatesearch.search.reeval import TRIAL_KEY as REEVAL

    cfg = ctx.reeval[config[REEVAL]] if REEVAL in config else config
    seed = int(cfg.get("train.seed", 0))
    adn = 0.70 + 0.01 * seed
    value = {"adn": adn, "gated_depth": 0.60}[cfg[TRIAL_KEY]] if cfg.get(TRIAL_KEY) else adn + DELTA[ctx.study](seed)
    for epoch in range(ctx.epochs):
        tune.report({"top1_super": value, "epochs_done": epoch + 1, "test_top1_FFF": value - 0.05,
                     "test_frontier_score": value - 0.05, "test_n": 100.0})


@pytest.mark.parametrize("study, kind, verdict", [
    ("reeval_same", "no_difference", "no difference detected with 3 seeds (interval [-0.0048, +0.0448])"),
    ("reeval_better", "better", "better"),
])
def test_reeval_verdict_end_to_end_with_known_per_seed_results(local_ray, tmp_path, study, kind, verdict):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = tiny_space(tmp_path, study, trials=4, epochs=2, reeval={"finalists": 1, "seeds": 3})
    summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"), verbose=0,
                                       trainable=known_trainable))
    section = summary["reeval"]
    assert section["complete"] and section["seeds"] == [1, 2, 3]
    assert [s["train.seed"] for s in section["seed_keys"]] == [1, 2, 3]
    assert [s["data.split_seed"] for s in section["seed_keys"]] == [1, 2, 3]  # index i sets both seeds
    rows = {r["baseline"] or "searched": r for r in section["finalists"]}
    assert set(rows) == {"searched", "adn"}  # the best searched trial and the best baseline (adn, not gated_depth)
    base = rows["adn"]
    assert base["values"] == pytest.approx([0.71, 0.72, 0.73]) and base["mean"] == pytest.approx(0.72)
    assert base["low"] == pytest.approx(0.72 - 4.302652729749464 * 0.01 / 3**0.5, abs=1e-9)
    diff = rows["searched"]["vs_baseline"]
    assert diff["kind"] == kind and diff["verdict"] == verdict
    expected_mean = 0.02 if kind == "no_difference" else 0.12
    assert diff["mean"] == pytest.approx(expected_mean) and diff["std"] == pytest.approx(0.01)
    # the best trial is now the crowned finalist, with its interval; best.json says so
    assert summary["best"]["trial_id"] == rows["searched"]["trial_id"] and summary["best"]["reeval"]["n"] == 3
    best = json.loads((tmp_path / "rr" / study / "best.json").read_text())
    assert best["reeval"]["vs_baseline"]["verdict"] == verdict and "crowned" in best["verdict"]
    # the parent MLflow run: mean and interval as metrics, the verdict as a tag, the finalists table
    client = MlflowClient(uri)
    parent = client.get_run(summary["parent_run_id"])
    name = rows["searched"]["name"]
    assert parent.data.metrics[f"reeval_diff_{name}"] == pytest.approx(expected_mean)
    assert parent.data.metrics[f"reeval_diff_low_{name}"] == pytest.approx(diff["low"])
    assert parent.data.metrics["reeval_mean_adn"] == pytest.approx(0.72)
    assert parent.data.tags[f"gatesearch.reeval.verdict.{name}"] == verdict
    assert verdict in parent.data.tags["gatesearch.verdict"]
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "reeval_finalists.json", str(tmp_path))).read_text())
    assert len(table["data"]) == 2 and "verdict" in table["columns"]
    assert any(verdict in line for line in describe(summary).splitlines())


@RAY_TIMING
def test_interrupted_reeval_resumes_without_duplicate_runs(local_ray, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = tiny_space(tmp_path, "reresume", trials=3, epochs=2, grace=2, reeval={"finalists": 1, "seeds": 2})
    # the slowed trial indices hold in the re-evaluation too, so the stop lands inside it; SIGTERM (`kill`, a
    # scheduler), which Ray's own handler turned into an instant death, stops the study as Ctrl+C does
    done = interrupt_once(space, uri, tmp_path, local_ray, " and tags.`gatesearch.kind` = 'reeval'", timeout_s=240,
                          sig=signal.SIGTERM)
    history = {r.info.run_id: len(MlflowClient(uri).get_metric_history(r.info.run_id, "train_loss")) for r in done}
    ids = json.loads((tmp_path / "rr" / "reresume" / "mlflow_parent.json").read_text())
    left = MlflowClient(uri).search_runs([ids["experiment_id"]])
    assert not [r.info.run_name for r in left if r.info.status == "RUNNING"]  # nothing runs: no run says it does
    # the seeds the stop cut short end KILLED with their reason; the resume below reopens them
    killed = [r for r in left if r.info.status == "KILLED" and r.info.run_id != ids["parent_run_id"]]
    assert killed and all(r.data.tags["gatesearch.stop_reason"] == "interrupted" for r in killed)
    # the block it began with is kept: a resume that asks for other seeds is refused before any work
    (tmp_path / "changed").mkdir()
    changed = tiny_space(tmp_path / "changed", "reresume", trials=3, epochs=2, grace=2,
                         reeval={"finalists": 1, "seeds": 3})
    with pytest.raises(UserError, match=r"^study.reeval: .*seeds: 2.*seeds: 3"):
        run_search(SearchOptions(space=str(changed), tracking_uri=uri, storage=str(tmp_path / "rr"), resume=True,
                                 verbose=0))

    summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"),
                                       resume=True, verbose=0))
    assert not summary["interrupted"] and summary["reeval"]["complete"]
    runs = [r for r in child_runs(uri, summary) if r.data.tags.get("gatesearch.kind") == "reeval"]
    # (1 finalist + 1 baseline) x 2 seeds, one run each
    assert len(runs) == 4
    assert sorted((r.data.tags["gatesearch.reeval_of"], r.data.tags["gatesearch.reeval_seed"]) for r in runs) == sorted(
        (f["trial_id"], str(i)) for f in summary["reeval"]["finalists"] for i in (1, 2))
    client = MlflowClient(uri)
    for run_id, n in history.items():  # a finished seed was not trained again
        assert len(client.get_metric_history(run_id, "train_loss")) == n == 2
    again = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"),
                                     resume=True, verbose=0))  # a second resume: nothing new
    assert len([r for r in child_runs(uri, again) if r.data.tags.get("gatesearch.kind") == "reeval"]) == 4


def saved_search_time(study_dir: Path) -> float:
    """The search clock's count in the newest experiment snapshot Tune saved (0 before the first)."""
    states = sorted(study_dir.glob("callback-states-*.pkl"), key=lambda p: p.stat().st_mtime)
    if not states:
        return 0.0
    try:
        saved = pickle.loads(states[-1].read_bytes())
    except (EOFError, pickle.UnpicklingError):  # caught while Tune replaces it
        return 0.0
    return max((s["spent_s"] for s in saved.values() if isinstance(s, dict) and "spent_s" in s), default=0.0)


@RAY_TIMING
def test_a_resumed_study_that_spends_its_time_budget_has_ended(local_ray, tmp_path, monkeypatch):
    """Tune carries its time budget over a restore (its stopper is saved with the experiment state). A study
    interrupted after most of its budget, then resumed, runs out of it with trials left: it has ended, not been
    interrupted, so it goes on to its re-evaluation, and a further --resume starts nothing. (Judged by the
    resumed process's own wall time, the runner used to report it interrupted on every resume.)"""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    budget = 30.0
    # every trial but the first sleeps 2 x 2 s: 19 of them, two at a time, need > 38 s, more than the budget
    slow = ",".join(f"slow@{i}" for i in range(1, 20))
    space = tiny_space(tmp_path, "budget", trials=20, epochs=2, grace=2, reeval={"finalists": 1, "seeds": 2},
                       time_budget_s=budget)
    study_dir = tmp_path / "rr" / "budget"
    interrupt_search(space, uri, tmp_path, local_ray, slow, lambda: saved_search_time(study_dir) >= 0.7 * budget,
                     timeout_s=240)

    monkeypatch.setenv(FAULT_ENV, slow)  # the resumed trials are as slow
    summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"),
                                       resume=True, verbose=0))
    assert summary["n_trials"] < 20, "the study fitted its budget: this test no longer resumes into a spent budget"
    assert not summary["interrupted"] and summary["reeval"]["complete"]
    assert summary["search_time_s"] >= 0.95 * budget  # >= 0.7 x budget of it before the resume
    assert all(t["stop_reason"] == "stopped by the time budget" for t in summary["trials"] if t["state"] == "STOPPED")
    n_runs = len(child_runs(uri, summary))
    again = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"),
                                     resume=True, verbose=0))
    assert not again["interrupted"] and again["n_trials"] == summary["n_trials"]
    assert len(child_runs(uri, again)) == n_runs  # nothing new was trained


@RAY_TIMING
def test_study_removes_only_its_own_scratch(local_ray, tmp_path):
    """The runner removes ``<tmp>/gatesearch-trials/<study>/<parent run id>``, which its trials wrote; another
    run of the same study name and another study keep theirs (the old clean-up removed ``<study>`` whole)."""
    import tempfile

    from gatesearch.search.trainable import SCRATCH_ROOT

    study = f"scratch-{os.getpid()}"
    root = Path(tempfile.gettempdir()) / SCRATCH_ROOT
    keep = [root / study / "another-run" / "last.pt", root / f"other-{os.getpid()}" / "run" / "last.pt"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("not this study run's")
    try:
        summary = run_search(SearchOptions(space=str(tiny_space(tmp_path, study, trials=2, epochs=1, baselines=False)),
                                           tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                           storage=str(tmp_path / "rr"), verbose=0))
        assert summary["n_complete"] == 2
        assert not (root / study / summary["parent_run_id"]).exists()
        assert all(p.read_text() == "not this study run's" for p in keep)
    finally:
        for p in keep:
            p.unlink(missing_ok=True)
            p.parent.rmdir()
        for d in (root / study, root / f"other-{os.getpid()}"):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


@RAY_TIMING
def test_one_search_per_study_and_a_killed_one_is_resumed(local_ray, tmp_path, capsys):
    """A study running in another process (written under a group-writable umask) holds its store: a second
    ``search --resume`` exits 2 naming that process; once it is killed (SIGKILL: no clean-up ran), ``--resume``
    takes over its lock, trusts the store it wrote and finishes the study."""
    from gatesearch.cli import main
    from gatesearch.preflight import check_trusted_storage
    from gatesearch.search.preflight import LOCK_FILE

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = tiny_space(tmp_path, "locked", trials=3, epochs=2, grace=2)
    study = tmp_path / "rr" / "locked"
    cmd = [sys.executable, "-m", "gatesearch.cli", "search", "--space", str(space), "--tracking-uri", uri,
           "--storage", str(tmp_path / "rr"), "--address", local_ray]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: os.umask(0o002),
                            env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: "slow@1,slow@2"})
    deadline, finished = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None and not finished:
        time.sleep(1)
        if (study / "mlflow_parent.json").is_file():
            ids = json.loads((study / "mlflow_parent.json").read_text())
            finished = [r for r in MlflowClient(uri).search_runs([ids["experiment_id"]], filter_string=(
                f"tags.`mlflow.parentRunId` = '{ids['parent_run_id']}'")) if r.info.status == "FINISHED"]
    assert finished, proc.communicate()[0][-3000:] if proc.poll() is not None else "no trial finished in time"
    rc = main(["search", "--space", str(space), "--tracking-uri", uri, "--storage", str(tmp_path / "rr"), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"pid {proc.pid} on host {socket.gethostname()}" in err[0], err
    proc.kill()
    proc.communicate(timeout=60)
    assert (study / LOCK_FILE).is_file()  # the killed holder left its file

    summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"),
                                       resume=True, verbose=0))
    assert f"left by pid {proc.pid}" in capsys.readouterr().err
    assert summary["n_trials"] == 3 and summary["n_complete"] == 3 and not summary["interrupted"]
    assert not (study / LOCK_FILE).exists()
    check_trusted_storage(tmp_path / "rr", study)  # what both processes wrote passes the check again
