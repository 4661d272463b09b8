"""A study's store (issue 27 items 2, 4, 6): the trust rule ``--resume`` applies before Tune unpickles
anything, the lock that keeps one ``search`` per study, and what a study asks of its cluster.
The CLI-level refusals (one line, exit 2, nothing changed) are in ``test_bad_inputs.py``."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _planted import PLACES, plant

from gatesearch.errors import UserError
from gatesearch.preflight import check_trusted_storage
from gatesearch.search import preflight
from gatesearch.search.preflight import LOCK_FILE, fit_to_cluster, study_lock

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- the trust rule


def test_planted_payloads_are_live_when_loaded_as_tune_loads_them(tmp_path: Path) -> None:
    """The refusals in test_bad_inputs guard something real: each planted file, loaded the way Tune loads it on
    restore (cloudpickle for the pickles and the *_state files, Tune's JSON decoder with its cloudpickle fallback
    for experiment_state), runs the payload."""
    pytest.importorskip("ray")
    from ray import cloudpickle
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    files = plant(tmp_path / "rr", tmp_path / "ran")
    for name, path in files.items():
        marker = tmp_path / "ran"
        marker.unlink(missing_ok=True)
        if "experiment_state" in name:
            _loads_with_cloudpickle(path.read_text())
        else:
            cloudpickle.loads(path.read_bytes())
        assert marker.exists(), name


def test_an_untouched_store_is_trusted(tmp_path: Path) -> None:
    storage = tmp_path / "rr"
    plant(storage, tmp_path / "ran")
    (storage / "quickstart" / "summary.json").write_text("{}")
    check_trusted_storage(storage, storage / "quickstart", storage / "quickstart-reeval")
    check_trusted_storage(tmp_path / "none", tmp_path / "none" / "s")  # nothing to resume yet
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_storage_itself_must_be_yours_alone(mode: int, tmp_path: Path) -> None:
    storage = tmp_path / "rr"
    plant(storage, tmp_path / "ran")
    storage.chmod(mode)
    try:
        with pytest.raises(UserError, match=f"--resume: {storage} is writable by"):
            check_trusted_storage(storage, storage / "quickstart")
    finally:
        storage.chmod(0o755)


@pytest.mark.parametrize("special", ["fifo", "symlinked_trial_dir"])
def test_anything_unexpected_is_refused(special: str, tmp_path: Path) -> None:
    storage = tmp_path / "rr"
    files = plant(storage, tmp_path / "ran")
    if special == "fifo":
        odd = storage / "quickstart" / "tuner.pkl"
        odd.unlink()
        os.mkfifo(odd)
    else:
        trial = files["trial_params"].parent
        odd = storage / "quickstart" / "t001_ffffffff"
        odd.symlink_to(trial)
    with pytest.raises(UserError, match="symbolic link or special file"):
        check_trusted_storage(storage, storage / "quickstart")


# ---------------------------------------------------------------- the lock


def test_lock_names_its_holder_and_is_released_on_an_exception(tmp_path: Path) -> None:
    study = tmp_path / "rr" / "s"
    with pytest.raises(RuntimeError, match="crash"):
        with study_lock(study):
            assert (study / LOCK_FILE).read_text() == f"{os.getpid()} {HOST}\n"
            with pytest.raises(UserError, match=f"in use by pid {os.getpid()} on host {HOST}"):
                with study_lock(study):
                    pass
            raise RuntimeError("crash")
    assert not (tmp_path / "rr").exists()  # the lock file and the directories it created are gone
    with study_lock(study):
        pass


def test_lock_left_by_a_killed_search_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """SIGKILL leaves the lock file behind; the kernel dropped the lock with the process, so the next search
    takes it over and says whose it was."""
    study = tmp_path / "rr" / "s"
    hold = ("import sys, time\nfrom pathlib import Path\nfrom gatesearch.search.preflight import study_lock\n"
            "with study_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(study)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"pid {holder.pid} on host {HOST}"):
        with study_lock(study):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (study / LOCK_FILE).is_file()  # a crash leaves the file
    with study_lock(study):
        assert (study / LOCK_FILE).read_text() == f"{os.getpid()} {HOST}\n"
    assert f"left by pid {holder.pid} on host {HOST} (no longer running)" in capsys.readouterr().err
    assert not (study / LOCK_FILE).exists()


def test_a_file_where_the_study_directory_goes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("not a study")
    with pytest.raises(UserError, match="exists and is not a directory"):
        with study_lock(tmp_path / "s"):
            pass
    assert (tmp_path / "s").read_text() == "not a study"


def test_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = tmp_path / "s"
    study.mkdir()
    dead = _dead_pid()
    (study / LOCK_FILE).write_text(f"{dead} {HOST}\n")
    with study_lock(study):
        pass
    assert f"pid {dead} on host {HOST}" in capsys.readouterr().err
    assert study.is_dir()  # not created by the lock: kept


@pytest.mark.parametrize("holder,refused", [("live", True), ("dead", False), ("other_host", True), ("garbled", False)])
def test_without_flock_the_pid_decides(holder: str, refused: bool, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without locks (ENOLCK): a live pid on this host, or any pid on another host, holds the
    study; a dead pid on this host, or a file that names nobody, is stale."""
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(preflight.fcntl, "flock", no_flock)
    study = tmp_path / "s"
    study.mkdir()
    text = {"live": f"{os.getppid()} {HOST}", "dead": f"{_dead_pid()} {HOST}", "other_host": "1 elsewhere.example",
            "garbled": "not a pid"}[holder]
    (study / LOCK_FILE).write_text(text + "\n")
    if refused:
        with pytest.raises(UserError, match="in use by pid"):
            with study_lock(study):
                pass
        assert (study / LOCK_FILE).read_text() == text + "\n"  # the holder's file is left alone
    else:
        with study_lock(study):
            pass


# ---------------------------------------------------------------- what the cluster can hold


@pytest.mark.parametrize("gpu,have", [(1, 0), (0.5, 0), (2, 1)])
def test_gpu_trials_need_a_gpu_on_a_local_ray(gpu: float, have: float) -> None:
    with pytest.raises(UserError, match="study.resources.gpu"):
        fit_to_cluster(2, 1, gpu, {"CPU": 8.0, "GPU": float(have)}, local=True)


@pytest.mark.parametrize("want,cpu,gpu,resources,cap", [
    (2, 1, 0, {"CPU": 2.0}, 2),                       # fits: no warning
    (100, 1, 0, {"CPU": 4.0}, 4),                     # far above: capped to the CPUs
    (8, 2, 0.25, {"CPU": 32.0, "GPU": 1.0}, 4),       # the GPU share binds first
    (4, 0.5, 0, {"CPU": 2.0}, 4),                     # fractional CPUs: 4 fit
])
def test_max_concurrent_trials_is_capped_to_what_the_cluster_holds(want: int, cpu: float, gpu: float,
                                                                  resources: dict, cap: int) -> None:
    got, warning = fit_to_cluster(want, cpu, gpu, resources, local=True)
    assert got == cap
    assert (warning is None) == (want == cap)
    if warning:
        assert warning.startswith("study.max_concurrent_trials") and f"capped to {cap}" in warning


def test_a_joined_cluster_without_room_is_warned_not_refused() -> None:
    """An autoscaling cluster may add GPU nodes once trials ask: warn, keep the setting."""
    got, warning = fit_to_cluster(4, 1, 1, {"CPU": 16.0}, local=False)
    assert got == 4 and warning and "no trial" in warning


@pytest.mark.parametrize("workers,cpu,gpu,resources,key", [
    (3, 1, 0, {"CPU": 2.0}, "study.resources.workers"),            # 3 workers x 1 CPU, 2 CPUs: never starts
    (2, 2, 0, {"CPU": 3.0}, "study.resources.workers"),
    (2, 1, 1, {"CPU": 8.0}, "study.resources.gpus_per_worker"),    # GPU workers, no GPU
    (4, 1, 1, {"CPU": 8.0, "GPU": 2.0}, "study.resources.workers"),  # 4 GPU workers, 2 GPUs
])
def test_workers_a_local_ray_can_never_hold_are_refused(workers: int, cpu: float, gpu: float, resources: dict,
                                                       key: str) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as e:
        fit_to_cluster(1, cpu, gpu, resources, local=True, workers=workers)
    assert "\n" not in str(e.value)


def test_multi_worker_trials_are_capped_by_their_workers() -> None:
    """A trial holds all its workers: 2 workers x 1 CPU on 4 CPUs is 2 trials at once, not 4."""
    assert fit_to_cluster(4, 1, 0, {"CPU": 4.0}, local=True, workers=2) == (
        2, "study.max_concurrent_trials: 4 trials at once, but the cluster holds 2 (4 CPU / 2 per trial); capped to 2")
    got, warning = fit_to_cluster(2, 1, 1, {"CPU": 16.0}, local=False, workers=4)  # joined: GPU nodes may join
    assert got == 2 and warning and "no trial" in warning


def test_pickle_payload_helper_is_a_plain_pickle(tmp_path: Path) -> None:
    """The planted ``.pkl`` files are ordinary pickles: the standard library alone runs them."""
    path = plant(tmp_path / "rr", tmp_path / "ran")["tuner"]
    pickle.loads(path.read_bytes())
    assert (tmp_path / "ran").exists() and set(PLACES) >= {"tuner", "reeval_tuner"}
