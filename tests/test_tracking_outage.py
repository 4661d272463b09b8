"""A tracking server that stops answering (#27 item 5): bounded MLflow calls, the driver's watch, the runs a
stopped study could not close, and a real ``mlflow server`` killed in the middle of a study, then ``--resume``."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from test_search_runner import tiny_space  # noqa: E402

from gatesearch import tracking  # noqa: E402
from gatesearch.search import outage  # noqa: E402
from gatesearch.search.runner import SearchOptions, run_search  # noqa: E402
from gatesearch.search.trainable import FAULT_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_calls_are_bounded_in_every_process_that_tracks() -> None:
    """A fresh process (a Ray worker is one) gets the bounds when it imports tracking; a value the user
    exported wins."""
    code = "import os, gatesearch.tracking; print([os.environ[k] for k in gatesearch.tracking.HTTP_ENV])"
    env = {k: v for k, v in os.environ.items() if k not in tracking.HTTP_ENV} | {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert list(tracking.HTTP_ENV) == ["MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
    assert out.strip() == "['60', '2', '1']"  # MLflow's defaults: 120, 7, 2


def test_a_dead_server_is_one_error_naming_it_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: MLflow's 7 retries (~4 min) times _with_retries' 10 attempts. Now MLflow's 2 retries, once."""
    monkeypatch.setitem(tracking._PATIENCE, "s", 0.0)
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as info:
        tracking.study_experiment_id(uri, "x")
    assert time.monotonic() - t0 < 15
    assert str(info.value) == f"the MLflow server at {uri} does not answer (Connection refused)"
    assert info.value.reason == "Connection refused"
    # an error the server answered with is not an outage
    assert tracking.unavailable_reason(MlflowException("RESOURCE_DOES_NOT_EXIST: run abc")) is None


def test_a_worker_retries_a_silent_server_for_its_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tracking._PATIENCE, "s", 4.0)
    monkeypatch.setattr(tracking, "_PATIENCE_POLL_S", 1.0)
    calls = []

    def refused() -> None:
        calls.append(time.monotonic())
        try:
            raise __import__("requests").ConnectionError("[Errno 111] Connection refused")
        except Exception as e:
            raise MlflowException("API request to http://h:5000/api/2.0/mlflow/runs/get failed") from e

    with pytest.raises(tracking.TrackingUnavailable, match="server at http://h:5000 does not answer"):
        tracking._with_retries(refused)
    assert calls[-1] - calls[0] >= 4.0 and len(calls) >= 4  # retried for its patience, then gave up


class _Stub(http.server.BaseHTTPRequestHandler):
    code = 404

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(type(self).code)
        self.end_headers()
        self.wfile.write(b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("code, down", [(404, False), (401, False), (503, True)])
def test_the_probe_counts_only_silence_and_gateway_errors_as_down(code: int, down: bool) -> None:
    handler = type("Stub", (_Stub,), {"code": code})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reason = tracking.server_down_reason(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert (reason is not None) is down
    assert tracking.server_down_reason(f"http://127.0.0.1:{_free_port()}") == "Connection refused"


def test_the_watch_stops_after_the_server_was_silent_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    raised = []
    monkeypatch.setattr(outage.signal, "getsignal", lambda sig: (lambda *a: None))  # as under Tuner.fit
    monkeypatch.setattr(outage.signal, "raise_signal", raised.append)
    clock = [1000.0]
    monkeypatch.setattr(outage.time, "monotonic", lambda: clock[0])
    uri = f"http://127.0.0.1:{_free_port()}"
    watch = outage.start(uri)
    assert tracking._PATIENCE["s"] == 0.0  # the driver does not wait itself: the watch decides
    tracking.set_patience(120.0)
    watch.on_step_end(iteration=0, trials=[])
    clock[0] += outage.DOWN_AFTER_S - 1
    watch.on_step_end(iteration=1, trials=[])
    assert watch.reason is None and not raised  # silent, but not for long enough yet
    clock[0] += outage.PROBE_EVERY_S
    watch.on_step_end(iteration=2, trials=[])
    assert raised == [signal.SIGUSR1] and watch.reason == f"Connection refused, for {outage.DOWN_AFTER_S + 4:.0f} s"
    assert watch.message().startswith(f"tracking server {uri} stopped answering (Connection refused")
    assert watch.message().endswith("run the same command with --resume")
    # Tuner.restore unpickles its callbacks: it must get the running study's watch, not the saved one
    assert pickle.loads(pickle.dumps(watch)) is outage.current() is watch
    # a driver-side tracking call that gives up stops the study the same way (once)
    outage.start(uri)
    tracking.set_patience(120.0)

    class Calls(ray.tune.Callback):
        def on_trial_complete(self, *args: object, **kwargs: object) -> None:
            raise tracking.TrackingUnavailable("m", "Connection reset by peer")

        def on_trial_error(self, *args: object, **kwargs: object) -> None:
            raise ValueError("a bug, not an outage")

    outage.Guarded(Calls()).on_trial_complete(iteration=0, trials=[], trial=None)
    assert outage.current().reason == "Connection reset by peer" and len(raised) == 2
    with pytest.raises(ValueError):  # anything else still raises
        outage.Guarded(Calls()).on_trial_error(iteration=0, trials=[], trial=None)
    # MLflow's own error for a call that bypasses tracking's retries (a raw client.get_run) stops it too
    outage.start(uri)
    tracking.set_patience(120.0)
    with pytest.raises(MlflowException) as raw:
        tracking.study_client(uri).get_run("0" * 32)
    assert tracking.unavailable_reason(raw.value) == "Connection refused"


def test_resume_closes_the_runs_a_stopped_study_could_not(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.study_experiment_id(uri, "outage")
    parent = tracking.start_study_run(uri, exp, "outage", "x: 1", "space.yaml", {})
    ids = [tracking.trial_run(uri, exp, parent, f"t{i}", f"r{i}", {}, {})[0] for i in range(3)]
    rows = [("COMPLETE", "finished", None), ("ERROR", "errored", "RuntimeError: boom"), ("STOPPED", "interrupted", None)]
    summary = {"trials": [{"mlflow_run_id": rid, "state": state, "stop_reason": why, "error": err, "epochs_done": 2}
                          for rid, (state, why, err) in zip(ids, rows)]}
    assert outage.close_ended_runs(uri, exp, parent, summary) == 2
    client = MlflowClient(uri)
    runs = [client.get_run(rid) for rid in ids]
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "RUNNING"]  # the interrupted one resumes
    assert runs[0].data.tags["gatesearch.stop_reason"] == "finished" and runs[0].data.tags["gatesearch.full_budget"] == "True"
    assert runs[1].data.tags[tracking.ERROR_TAG] == "RuntimeError: boom"
    assert outage.close_ended_runs(uri, exp, parent, summary) == 0


# ----------------------------------------------------------------- a real server killed during a study


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` in its own process group (its workers are children): killed as one, and only it."""
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(1)


def _kill(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.flaky(reruns=1, reruns_delay=2)
def test_a_server_killed_after_the_first_trial_stops_the_study_and_resume_finishes_it(local_ray, tmp_path):
    """The server dies once the first trial's run is FINISHED while two others train: the study ends within
    90 s with one line naming the server (exit 2, no traceback), its unfinished trials saved as unfinished;
    with the server back on the same store, ``--resume`` finishes them with one child run per trial. (Also the
    test of a study logging to an ``http://`` server: runs, metrics and the checkpoint artifact.)"""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    space = tiny_space(tmp_path, "outage", trials=3, epochs=3, grace=3, baselines=False)
    study = tmp_path / "rr" / "outage"
    cmd = [sys.executable, "-m", "gatesearch.cli", "search", "--space", str(space), "--tracking-uri", uri,
           "--storage", str(tmp_path / "rr"), "--address", local_ray, "--no-select"]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: "slow@1,slow@2"})
    try:
        deadline, finished = time.time() + 180, []
        while time.time() < deadline and proc.poll() is None and not finished:
            time.sleep(0.5)
            if (study / "mlflow_parent.json").is_file():
                ids = json.loads((study / "mlflow_parent.json").read_text())
                finished = [r for r in MlflowClient(uri).search_runs([ids["experiment_id"]], filter_string=(
                    f"tags.`mlflow.parentRunId` = '{ids['parent_run_id']}'")) if r.info.status == "FINISHED"]
        assert finished, (tmp_path / "err.txt").read_text()[-3000:]
        _kill(server)
        killed = time.monotonic()
        proc.wait(timeout=150)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill(server)
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    print(f"kill -> exit: {took:.1f} s")
    assert proc.returncode == 2, stderr[-3000:]
    assert took < 90, f"{took:.0f} s from the kill to the exit"
    naming = [line for line in stderr.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(naming) == 1 and naming[0].startswith(f"gatesearch search: error: tracking server {uri} stopped "
                                                     "answering") and "--resume" in naming[0], naming
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    saved = ray.tune.ExperimentAnalysis(str(study)).trials
    assert [t.status for t in saved].count("TERMINATED") >= 1 and "ERROR" not in [t.status for t in saved]
    assert any(t.status not in ("TERMINATED", "ERROR") for t in saved)  # unfinished, so --resume runs them
    assert json.loads((study / "summary.json").read_text())["interrupted"]

    server = _start_server(tmp_path, port)  # the same store, back
    try:
        summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"),
                                           resume=True, select=False, verbose=0))
        assert summary["n_trials"] == 3 and summary["n_complete"] == 3 and not summary["interrupted"]
        client = MlflowClient(uri)
        runs = client.search_runs([summary["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
        assert len(runs) == 3 and len({r.data.tags[tracking.TRIAL_TAG] for r in runs}) == 3
        assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        for r in runs:  # every epoch's metrics, the one the dead server did not get trained and sent again
            assert {m.step for m in client.get_metric_history(r.info.run_id, "top1_super")} == {0, 1, 2}
        for r in finished:  # what a trial logs over http:// before the outage, its checkpoint artifact included
            assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
        assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"
    finally:
        _kill(server)
