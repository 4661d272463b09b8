from pathlib import Path

import pytest
from _training import one_thread

from gatesearch.cli import main

_threads = pytest.fixture(autouse=True)(one_thread)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2", "--set", "data.batch_size=32"]


def _run(capsys, tmp_path, *args):
    """`train` with FAST's overrides, except those the case sets itself (a key given twice is refused)."""
    own = {a.split("=", 1)[0] for a in args if "=" in a}
    fast = [x for pair in zip(FAST[::2], FAST[1::2]) if pair[1].split("=", 1)[0] not in own for x in pair]
    code = main(["train", "--no-mlflow", "--set", f"train.out_dir={tmp_path}", *fast, *args])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("method.name=nope", "method.name"),
        ("model.name=resnet7", "model.name"),
        ("data.name=mnist", "unknown dataset"),
        ("method.adn.alpha=1.5", "method.adn.alpha"),
        ("method.gated_depth.alpha=-0.1", "method.gated_depth.alpha"),
        ("method.gated_depth.p_min=0.9", "p_min"),
        ("method.gated_depth.k=0", "method.gated_depth.k"),
        ("data.name=cifar10", "data.root"),
        ("method.plain.train_pattern=TX", "train_pattern"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, override, needle):
    extra = ["--set", "method.gated_depth.p_max=0.5"] if "p_min" in override else []
    code, out = _run(capsys, tmp_path, "--set", override, *extra)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.err


def test_missing_data_dir(capsys, tmp_path):
    code, out = _run(capsys, tmp_path, "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}/nodata")
    assert code == 2 and "nodata" in out.err and len(out.err.strip().splitlines()) == 1


def test_corrupt_checkpoint_and_missing_config(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    code, out = _run(capsys, tmp_path, "--resume", str(bad))
    assert code == 2 and "corrupt" in out.err and len(out.err.strip().splitlines()) == 1
    code, out = _run(capsys, tmp_path, "--config", str(tmp_path / "none.yaml"))
    assert code == 2 and "none.yaml" in out.err


def test_diverging_run_exits_1_with_one_line(capsys, tmp_path):
    code, out = _run(capsys, tmp_path, "--set", "optim.lr=1e30", "--set", "train.max_steps_per_epoch=10")
    assert code == 1
    last = out.err.strip().splitlines()[-1]
    assert "diverged" in last


def test_train_example_config_and_resume(capsys, tmp_path):
    code, out = _run(capsys, tmp_path, "--config", str(CONFIGS / "digits_adn.yaml"))
    assert code == 0 and "top1_super" in out.out
    code, out = _run(capsys, tmp_path, "--config", str(CONFIGS / "digits_adn.yaml"), "--set", "train.epochs=2",
                     "--resume", str(tmp_path / "last.pt"))
    assert code == 0 and "epoch 2/2" in out.err and "epoch 1/2" not in out.err


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from gatesearch.config import load

    assert load(path).method.name in path.stem


def test_sigterm_ends_the_run_killed_and_resume_continues_the_same_run(tmp_path):
    """#27 item 3: SIGTERM during `train` ends the MLflow run KILLED with its reason (never RUNNING);
    `train --resume` continues that run (same id, params logged once, metrics go on) to FINISHED; resuming a
    finished checkpoint says so, exits 0 and opens no run."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "out"
    base = [sys.executable, "-m", "gatesearch.cli", "train", "--config", str(CONFIGS / "digits_plain.yaml"),
            "--tracking-uri", uri, "--set", f"train.out_dir={out}", "--set", "train.epochs=40",
            "--set", "train.eval_every=40"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(base, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "last.pt").exists():
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log[-2000:]
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["gatesearch.stop_reason"] == "killed by SIGTERM"
    n_params = len(run.data.params)

    resumed = subprocess.run([*base[:-4], "--set", "train.epochs=3", "--set", "train.eval_every=1", "--resume",
                              str(out / "last.pt")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # no second run
    again = client.get_run(run_id)
    assert again.info.status == "FINISHED" and len(again.data.params) == n_params
    assert max(m.step for m in client.get_metric_history(run_id, "train_loss")) == 2  # epochs 0..2 in one history

    done = subprocess.run([*base[:-4], "--set", "train.epochs=3", "--resume", str(out / "last.pt")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "nothing to resume" in done.stdout
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_dead_tracking_server_is_one_error_and_never_hides_the_error_being_raised(monkeypatch):
    """#27 item 5 for `train`: a metric the server cannot take raises TrackingUnavailable after the bounded
    retries (not minutes of MLflow's own); ending the run then does not call the dead server again, and a
    failure met while the server is gone is still the error that surfaces."""
    import time

    from test_tracking_outage import _free_port

    from gatesearch import tracking

    monkeypatch.setitem(tracking._PATIENCE, "s", 0.0)
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    reporter = tracking.MLflowReporter(uri, run_id="0123456789abcdef")
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable, match=f"the MLflow server at {uri} does not answer"):
        reporter.on_epoch_end(0, {"train_loss": 1.0}, Path("last.pt"))
    assert time.monotonic() - t0 < 15
    calls = []
    monkeypatch.setattr(tracking.MlflowClient, "set_tag", lambda *a, **k: calls.append(a))
    reporter.on_fail(tracking.TrackingUnavailable("gone", "Connection refused"))
    assert calls == []  # the server is gone: nothing sent, the run stays RUNNING for --resume
    monkeypatch.undo()
    monkeypatch.setitem(tracking._PATIENCE, "s", 0.0)
    reporter.on_fail(RuntimeError("a corrupt image"))  # tries, finds no server, lets this error be raised


@pytest.mark.slow
def test_a_tracking_server_killed_mid_training_stops_train_with_one_line_and_resume_finishes_the_run(tmp_path):
    """A real `mlflow server` killed after the first epoch's metrics: `train` exits 2 within a minute with one
    line naming the server and the kept checkpoint, no traceback; with the server back, `--resume` logs into
    the same run, which ends FINISHED with every epoch's metrics."""
    import json
    import os
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient
    from test_tracking_outage import _free_port, _kill, _start_server

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    base = [sys.executable, "-m", "gatesearch.cli", "train", "--config", str(CONFIGS / "digits_plain.yaml"),
            "--tracking-uri", uri, "--set", f"train.out_dir={out}", "--set", "train.eval_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GATESEARCH_TRACKING_PATIENCE_S": "5"}
    server = _start_server(tmp_path, port)
    try:
        proc = subprocess.Popen([*base, "--set", "train.epochs=60"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline, logged = time.time() + 180, []
        while time.time() < deadline and proc.poll() is None and not logged:
            time.sleep(0.5)
            if (out / "mlflow_run.json").is_file():
                run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
                logged = MlflowClient(uri).get_metric_history(run_id, "train_loss")
        assert logged and proc.poll() is None, proc.communicate()[1][-2000:]
        _kill(server)
        killed = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - killed
        assert proc.returncode == 2, stderr[-2000:]
        assert took < 60, f"{took:.0f} s from the kill to the exit"
        naming = [line for line in stderr.splitlines() if uri in line]  # training's progress precedes it on stderr
        assert len(naming) == 1 and stderr.rstrip().endswith(naming[0]), stderr[-2000:]
        assert naming[0].startswith(f"gatesearch train: error: the MLflow server at {uri} does not answer"), naming
        assert f"--resume {out / 'last.pt'}" in naming[0]
        assert "Traceback" not in stdout + stderr and (out / "last.pt").is_file()

        server = _start_server(tmp_path, port)  # the same store, back
        resumed = subprocess.run([*base, "--set", "train.epochs=4", "--resume", str(out / "last.pt")], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1
        assert {m.step for m in client.get_metric_history(run_id, "train_loss")} == {0, 1, 2, 3}
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill(server)
