import pytest
from _training import one_thread, quick_cfg
from mlflow.tracking import MlflowClient

from gatesearch.cli import main
from gatesearch.config import to_flat
from gatesearch.tracking import MLflowReporter
from gatesearch.train import fit

_threads = pytest.fixture(autouse=True)(one_thread)


def test_mlflow_reporter_logs_params_metrics_artifact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = quick_cfg(str(tmp_path / "out"), "adn", train__epochs=2, train__max_steps_per_epoch=2, train__eval_every=1)
    rep = MLflowReporter(uri, "exp", run_name="t", artifact_location=str(tmp_path / "artifacts"))
    fit(cfg, [rep])
    client = MlflowClient(uri)
    run = client.get_run(rep.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "adn" and run.data.tags["dataset"] == "digits"
    assert run.data.params["method.adn.alpha"] == "0.5" and len(run.data.params) == len(to_flat(cfg))
    hist = client.get_metric_history(rep.run_id, "top1_super")
    assert [m.step for m in hist] == [0, 1]
    assert [a.path for a in client.list_artifacts(rep.run_id, "checkpoints")] == ["checkpoints/last.pt"]


def test_cli_train_logs_to_sqlite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--set", "train.epochs=1",
                 "--set", "train.max_steps_per_epoch=2", "--set", f"train.out_dir={tmp_path}/o",
                 "--set", "method.name=plain"])
    assert code == 0
    runs = MlflowClient(f"sqlite:///{tmp_path}/m.db").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path}/m.db").get_experiment_by_name("gatesearch").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["method"] == "plain" and runs[0].info.status == "FINISHED"


def test_sqlite_store_in_a_new_directory_keeps_artifacts_beside_it(tmp_path, monkeypatch):
    """SQLite creates the file, not its directory: a job's default ~/gatesearch/mlflow.db must still
    work, and its artifacts must not land in the creating process's (temporary) working directory."""
    from mlflow import MlflowClient

    from gatesearch.tracking import study_experiment_id

    monkeypatch.chdir(tmp_path)  # stands in for a Ray job's temporary working-dir copy
    store = tmp_path / "not" / "yet"
    uri = f"sqlite:///{store}/mlflow.db"
    exp_id = study_experiment_id(uri, "my study")
    assert study_experiment_id(uri, "my study") == exp_id and (store / "mlflow.db").is_file()
    location = MlflowClient(uri).get_experiment(exp_id).artifact_location
    assert location == (store / "mlruns" / "my_study").as_uri()


def test_system_metrics_and_dataset_inputs_reach_the_run(tmp_path, monkeypatch):
    """tracking.system_metrics: MLflow's monitor samples CPU and memory into the run while it trains; and
    every run records its three splits as dataset inputs whose digest changes with the split seed."""
    import time

    from gatesearch import tracking

    monkeypatch.setattr(tracking, "SYSTEM_METRICS_INTERVAL_S", 0.2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    class Slow:  # a reporter that keeps the run open long enough for a few samples
        def on_start(self, cfg, info): pass
        def on_step(self, step, epoch, parts): pass
        def on_epoch_end(self, epoch, metrics, path): time.sleep(1.0)
        def on_end(self, result): pass

    runs = []
    for split_seed in (0, 1):
        cfg = quick_cfg(str(tmp_path / f"out{split_seed}"), "plain", train__epochs=1, train__max_steps_per_epoch=2,
                        tracking__system_metrics=True, data__split_seed=split_seed)
        rep = MLflowReporter(uri, "sysm")
        fit(cfg, [Slow(), rep])
        runs.append(MlflowClient(uri).get_run(rep.run_id))
    assert any(k.startswith("system/cpu_utilization") for k in runs[0].data.metrics), sorted(runs[0].data.metrics)
    assert any(k.startswith("system/system_memory_usage") for k in runs[0].data.metrics)
    inputs = [{i.tags[0].value: i.dataset for i in r.inputs.dataset_inputs} for r in runs]
    assert set(inputs[0]) == {"training", "validation", "test"}
    assert inputs[0]["training"].digest != inputs[1]["training"].digest  # another split: other images
    assert inputs[0]["test"].digest == inputs[1]["test"].digest  # the test split does not move with it
