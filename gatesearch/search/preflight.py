"""What ``gatesearch search`` checks before it opens the study's MLflow parent run or writes a file: a
writable (and, when resumed, trusted) storage, a tracking store that answers, and a Ray cluster at
``--address``; then the lock that keeps a study's store one process's (``study_lock``) and what the cluster
can run (``fit_to_cluster``). Each raises a one-line ``UserError`` naming the option."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gatesearch.errors import UserError
from gatesearch.preflight import check_output_dir, check_trusted_storage
from gatesearch.tracking import check_tracking_uri

REEVAL_BLOCK_FILE = "gatesearch_reeval.json"  # in the re-evaluation's store: the study.reeval it began with
CONNECT_TIMEOUT_S = 5.0  # one TCP connect; a dead host:port is refused at once, a black hole waits this long


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port``, ``ray://host:port`` (client port 10001 by default) or
    ``http(s)://host:port``; None for ``auto`` (a cluster found on this node)."""
    if address == "auto":
        return None
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    rest = rest.split("/", 1)[0]
    host, colon, port = rest.rpartition(":")
    default = {"ray": 10001, "http": 80, "https": 443}.get(scheme)
    if not colon:
        host, port = rest, ""
    if not port and default is None:
        raise UserError(f"--address {address}: expected host:port, ray://host:port or auto")
    try:
        return host.strip("[]") or "127.0.0.1", int(port) if port else default
    except ValueError:
        raise UserError(f"--address {address}: port {port!r} is not a number") from None


def check_ray_address(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A cluster answers at ``address`` (one TCP connect), so ``ray.init`` does not retry a dead one for
    minutes; ``auto`` needs a cluster started on this node (``ray start``). None or ``local``: a new local
    Ray is started."""
    if address in (None, "local"):
        return
    hp = _host_port(address)
    if hp is None:
        try:
            from ray._private.services import find_gcs_addresses  # private: skip the check if it moves
        except ImportError:
            return
        if not os.environ.get("RAY_ADDRESS") and not find_gcs_addresses():
            raise UserError(f"--address {address}: no Ray cluster runs on this node (start one with `ray start --head`)")
        return
    try:
        socket.create_connection(hp, timeout=timeout_s).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise UserError(f"--address {address}: no Ray cluster answers at {hp[0]}:{hp[1]} ({reason})") from None


def check_search(address: str | None, tracking_uri: str, storage: Path, study_dir: Path, resume: bool,
                 reeval_dir: Path | None = None) -> None:
    """Everything ``gatesearch search`` needs before it opens the study's MLflow parent run or writes its
    marker: a writable storage (trusted, when resumed), a tracking store that answers, a live Ray address.
    ``reeval_dir`` (the re-evaluation experiment) is restored whenever it exists, so it is checked then too."""
    check_output_dir(storage, "--storage")
    if resume:
        check_trusted_storage(storage, study_dir, *([reeval_dir] if reeval_dir else []))
    elif reeval_dir is not None and reeval_dir.exists():
        check_trusted_storage(storage, reeval_dir)
    check_tracking_uri(tracking_uri, what="--tracking-uri")
    check_ray_address(address)


def _block_text(block: dict) -> str:
    return "{" + ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in block.items()) + "}"


def check_reeval_unchanged(reeval_dir: Path, block: dict | None) -> None:
    """A re-evaluation resumes with the ``study.reeval`` block it began with (``REEVAL_BLOCK_FILE``): Tune
    restores the saved grid of finalists x seeds, so another block would never complete. A store written
    before the file existed, or a space now without ``reeval`` (no re-evaluation runs), passes."""
    saved = reeval_dir / REEVAL_BLOCK_FILE
    if block is None or not saved.is_file():
        return
    before = json.loads(saved.read_text())
    if before != block:
        raise UserError(f"study.reeval: {reeval_dir} holds a re-evaluation begun with {_block_text(before)}, and "
                        f"the space now asks for {_block_text(block)}: restore that block to resume it, or run the "
                        "study in another --storage")


def ray_connect_error(address: str, error: BaseException) -> str:
    """The one line for a ``ray.init(address=...)`` that failed although the address answered."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    hint = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
        "; if the cluster uses token auth, export RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    return f"--address {address}: cannot join the Ray cluster ({first}){hint}"


LOCK_FILE = ".gatesearch.lock"


def _holder(text: str) -> tuple[int, str] | None:
    """(pid, host) from a lock file's ``pid host`` line; None when empty or garbled."""
    pid, _, host = text.strip().partition(" ")
    return (int(pid), host) if pid.isdigit() and host else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _lock_or_refuse(fd: int, path: Path, study_dir: Path) -> tuple[int, str] | None:
    """``flock`` the open lock file, returning the holder a stale file named (None if none). The kernel drops
    a lock when its process ends, however it ends (crash, SIGKILL), so a file left by a dead holder is free.
    On a file system without locks the pid stands in: a dead pid on this host is a stale lock."""
    holder = _holder(os.pread(fd, 256, 0).decode(errors="replace"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return holder
    except BlockingIOError:
        pass
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        if holder is None or (holder[1] == socket.gethostname() and not _alive(holder[0])):
            return holder
    who = f"pid {holder[0]} on host {holder[1]}" if holder else "another process"
    raise UserError(f"--storage: study {study_dir.name!r} in {study_dir.parent} is in use by {who} "
                    f"(lock {path}); wait for it, or stop it and run again with --resume")


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold ``<study_dir>/.gatesearch.lock`` while a ``search`` runs, so two processes never write one study's
    store: a second one raises a ``UserError`` naming the holder's pid and host. The lock is released on every
    exit path (the kernel drops a process's locks when it dies, so a lock left by a crash is taken over, with a
    line saying so); on release the file, and the directories this call created if still empty, are removed."""
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError(f"--storage: {study_dir} (study {study_dir.name!r}) exists and is not a directory")
    created = []
    p = study_dir
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / LOCK_FILE
    for _ in range(10):  # the holder may unlink the file between our open and our lock: open again
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            stale = _lock_or_refuse(fd, path, study_dir)
        except BaseException:
            os.close(fd)
            _remove_empty(created)
            raise
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    else:
        _remove_empty(created)
        raise UserError(f"--storage: cannot take the lock {path}: it keeps changing")
    if stale:
        print(f"--storage: took over the lock {path} left by pid {stale[0]} on host {stale[1]} (no longer running)",
              file=sys.stderr, flush=True)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock is dropped: a waiter that opened this file retries
        os.close(fd)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories ``study_lock`` created, deepest first, only while empty (nothing else's)."""
    for p in created:
        try:
            p.rmdir()
        except OSError:
            return


def fit_to_cluster(max_concurrent: int, cpu: float, gpu: float, resources: dict[str, float], local: bool,
                   workers: int = 1) -> tuple[int, str | None]:
    """``study.max_concurrent_trials`` capped to what the cluster's ``resources`` (``ray.cluster_resources()``)
    run at once, and the one warning line when capped. ``cpu`` / ``gpu`` are one training process's share; a
    trial holds ``workers`` of them. A trial that needs a GPU on a local Ray without enough of them, or more
    workers than a local Ray ever holds, is refused: it would wait PENDING until the time budget. On a joined
    cluster, nodes may still join (an autoscaler): nothing is refused or capped below one trial there, only
    warned."""
    have = {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0)}
    need = {"CPU": workers * cpu, "GPU": workers * gpu}
    key = "gpus_per_worker" if workers > 1 else "gpu"
    if local and gpu > 0 and have["GPU"] == 0:
        raise UserError(f"study.resources.{key}: {gpu:g} GPU per {'worker' if workers > 1 else 'trial'}, but this "
                        "machine's Ray has no GPU; set it to 0 or run on a machine (or --address) with one")
    if local and workers > 1:
        for k, unit in (("CPU", "cpus_per_worker"), ("GPU", "gpus_per_worker")):
            if need[k] > have[k] + 1e-9:
                raise UserError(f"study.resources.workers: {workers} workers x {need[k] / workers:g} {k} "
                                f"({unit}) = {need[k]:g} {k} per trial, but this machine's Ray has {have[k]:g}; "
                                "lower workers or run on a cluster (--address) that holds them")
    if local and gpu > have["GPU"]:
        raise UserError(f"study.resources.gpu: {gpu:g} GPU per trial, but this machine's Ray has "
                        f"{have['GPU']:g} GPU; set study.resources.gpu: 0 or run on a machine (or --address) with one")
    fits = min(math.floor(have[k] / need[k] + 1e-9) for k in need if need[k] > 0)
    what = ", ".join(f"{have[k]:g} {k} / {need[k]:g} per trial" for k in need if need[k] > 0)
    if fits < 1:
        return max_concurrent, (f"study.resources: the cluster has room for no trial now ({what}); trials wait "
                                "until nodes join")
    if max_concurrent > fits:
        return fits, (f"study.max_concurrent_trials: {max_concurrent} trials at once, but the cluster holds {fits} "
                      f"({what}); capped to {fits}")
    return max_concurrent, None
