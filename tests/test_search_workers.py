"""Multi-worker trials (``study.resources.workers`` > 1): each trial a Ray Train V2 ``TorchTrainer`` (gloo on
CPU), on a local Ray started the way ``gatesearch search`` starts one (``runner._start_local_ray``: bound to
127.0.0.1, with the state API Ray Train needs to remove a stopped trial's placement group)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
import yaml

ray = pytest.importorskip("ray")
from _interrupt import interrupt_search  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from gatesearch.search.runner import LOCAL_ONLY_ENV, SearchOptions, _start_local_ray, run_search  # noqa: E402
from gatesearch.search.trainable import FAULT_ENV, _train_registered  # noqa: E402

pytestmark = pytest.mark.flaky(reruns=1, reruns_delay=2)  # real processes on a loaded 2-core machine


def workers_space(tmp_path: Path, name: str, trials: int, epochs: int, lrs: list[float]) -> Path:
    """2 workers x 1 CPU per trial, one trial at a time; the objective is the (constant) learning rate, so
    which trial ASHA stops follows from Optuna's seeded draws alone."""
    space = {
        "study": {"name": name, "objective": {"metric": "lr", "mode": "max"},
                  "budget": {"trials": trials, "epochs": epochs}, "max_concurrent_trials": 1, "baselines": False,
                  "resources": {"workers": 2, "cpus_per_worker": 1}, "max_failures": 1,
                  "asha": {"grace_period": 1, "reduction_factor": 2}},
        "fixed": {"data.name": "digits", "data.train_subset": 128, "data.batch_size": 32, "data.augment": False,
                  "data.eval_batch_size": 256, "model.name": "resnet20", "train.device": "cpu",
                  "train.max_steps_per_epoch": 2, "train.log_every": 1000, "train.eval_all_patterns_max_units": 0,
                  "optim.schedule": "constant", "method.name": "gated_depth", "tracking.experiment": name},
        "search": {"optim.lr": {"choice": lrs}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module, started as the runner starts it; the runner then leaves it running."""
    assert not ray.is_initialized()
    _start_local_ray(num_cpus=2, state_api=True)
    yield ray.get_runtime_context().gcs_address  # where a `gatesearch search` subprocess connects
    ray.shutdown()


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    found = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def test_a_local_ray_listens_on_loopback_only(local_ray) -> None:
    """Issue 27 item 10: every process of the local cluster (GCS, raylet, agents, the API server, workers)
    listens on 127.0.0.1, never on all interfaces."""
    ray.get(ray.remote(lambda: 1).remote())  # a worker process too
    me = psutil.Process()
    pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
    found = _listening(pids)
    assert found, "no listening socket found"
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    assert {ip for ip, _ in found} <= loopback, sorted(found)
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def _pg_states() -> list[str]:
    return [pg["state"] for pg in ray.util.placement_group_table().values()]


def _all_removed(timeout_s: float = 30) -> None:
    """Every placement group in the cluster ends REMOVED (a trainer's group goes once its controller is gone)."""
    deadline = time.time() + timeout_s
    while {"CREATED", "PENDING"} & set(_pg_states()):
        assert time.time() < deadline, _pg_states()
        time.sleep(0.5)
    assert _pg_states() and set(_pg_states()) == {"REMOVED"}


def _stalled(study_dir: Path) -> str | None:
    """The id of the trial that the ``stall`` fault stopped, once Ray Train has recorded its checkpoint."""
    for marker in (study_dir / "faults").glob("stall-*"):
        trial_id = marker.name.removeprefix("stall-")
        if _train_registered(study_dir / "train" / trial_id / "checkpoint_manager_snapshot.json"):
            return trial_id
    return None


def _histories(client: MlflowClient, ids: dict) -> dict[str, tuple[str, list[int]]]:
    """Trial index -> (its MLflow child run, the steps of its ``train_loss`` history); one run per trial."""
    runs = client.search_runs([ids["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{ids['parent_run_id']}'")
    found = {r.data.tags["gatesearch.trial_index"]: (r.info.run_id, sorted(
        m.step for m in client.get_metric_history(r.info.run_id, "train_loss"))) for r in runs}
    assert len(found) == len(runs), sorted(r.data.tags["gatesearch.trial_index"] for r in runs)
    return found


@pytest.mark.slow  # 3 trainers of 2 processes, one retry and one interrupted: 2-3 minutes on a loaded 2-core machine
def test_two_worker_study_with_asha_a_killed_worker_and_an_interrupt(local_ray, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """3 trials of 2 workers x 1 CPU on a 2-CPU Ray, one at a time (Optuna's seeded draws: lr 0.05, 0.02,
    then TPE's pick, the best so far, 0.05). Trial 0's last rank dies after its first checkpoint: the trainer
    fails, Tune retries the trial (study.max_failures) and the new trainer restores that checkpoint, so
    epoch 0 is not trained again. ASHA stops trial 1 at epoch 1; trial 2 still starts (trial 1's placement
    group was removed, else it would wait for the CPUs forever), every placement group is removed at the
    end, and the metrics reach Tune and each MLflow child run once per epoch.

    The study runs as ``gatesearch search`` and is interrupted (Ctrl+C) while trial 2 stalls after its first
    checkpoint; ``--resume`` finishes it: trials 0 and 1 are not run again, trial 2 goes on from its Ray Train
    checkpoint in the same MLflow run (epoch 0 not trained again), and it gets its CPUs (the interrupted
    trainer's workers and placement group are gone)."""
    fault = "exit@0,stall@2"  # both once only: the resume below runs with the same faults, as `--resume` would
    monkeypatch.setenv(FAULT_ENV, fault)
    # the `gatesearch search` subprocess joins the module's single-machine Ray, which listens on 127.0.0.1 only:
    # without this Ray turns the address 127.0.0.1 into the node's routable one, where nothing listens
    monkeypatch.setenv(LOCAL_ONLY_ENV, "0")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = workers_space(tmp_path, "w2", 3, 2, [0.01, 0.05, 0.02])
    t0 = time.perf_counter()
    stalled = interrupt_search(space, uri, tmp_path, local_ray, fault, lambda: _stalled(tmp_path / "rr" / "w2"),
                               timeout_s=300)
    client = MlflowClient(uri)
    ids = json.loads((tmp_path / "rr" / "w2" / "mlflow_parent.json").read_text())
    before = _histories(client, ids)
    assert sorted(before) == ["0", "1", "2"] and before["2"][1] == [0], before  # interrupted inside epoch 1
    assert client.get_run(before["2"][0]).data.tags["gatesearch.trial_id"] == stalled
    _all_removed()  # the interrupted trainer's workers do not hold on to the CPUs the resumed one needs
    t1 = time.perf_counter()
    summary = run_search(SearchOptions(space=str(space), tracking_uri=uri, storage=str(tmp_path / "rr"), verbose=0,
                                       select=False, resume=True))
    elapsed, resumed = time.perf_counter() - t0, time.perf_counter() - t1
    assert not summary["interrupted"] and summary["parent_run_id"] == ids["parent_run_id"]
    trials = sorted(summary["trials"], key=lambda t: t["name"])
    assert [(t["state"], t["epochs_done"], t["objectives"]["lr"]) for t in trials] == [
        ("COMPLETE", 2, 0.05), ("STOPPED", 1, 0.02), ("COMPLETE", 2, 0.05)], trials
    assert trials[1]["stop_reason"] == "stopped early by ASHA at epoch 1"
    assert (tmp_path / "rr" / "w2" / "faults" / f"exit-{trials[0]['trial_id']}").is_file()  # the fault fired
    assert trials[2]["trial_id"] == stalled
    after = _histories(client, ids)  # one child run per trial: the resumed trial kept its own
    assert {i: run for i, (run, _) in after.items()} == {i: run for i, (run, _) in before.items()}
    assert after["0"] == before["0"] and after["1"] == before["1"]  # finished trials were not run again
    assert after["2"][1] == [0, 1]  # the resumed trial trained epoch 1 only
    _all_removed()
    assert client.get_run(ids["parent_run_id"]).info.status == "FINISHED"
    for t in trials:
        run = client.get_run(t["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["gatesearch.workers"] == "2"
        for metric in ("lr", "train_loss"):  # once per epoch (rank 0 logs), epoch 0 of trials 0 and 2 not again
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            # Ray Train hands reports to Tune through a queue of one: the workers may finish one more
            # (0.3 s) epoch before ASHA's stop reaches them, and its metrics are logged too
            assert steps == list(range(len(steps))) and len(steps) - t["epochs_done"] in (0, 1), (t["name"], steps)
        assert len(client.get_metric_history(run.info.run_id, "lr")) == t["epochs_done"] or t["state"] == "STOPPED"
    best = summary["best"]
    assert best["trial_id"] in (trials[0]["trial_id"], trials[2]["trial_id"])
    # the checkpoint stays in Ray Train's run directory, <storage>/<study>/train/<trial id>
    assert Path(best["checkpoint"]).is_file() and Path(best["checkpoint"]).parents[1] == (
        tmp_path / "rr" / "w2" / "train" / best["trial_id"])
    print(f"2-worker study, 3 trials (one retried, one interrupted): {elapsed:.1f} s, of which the resume {resumed:.1f} s")
