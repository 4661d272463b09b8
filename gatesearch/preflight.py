"""Checks that run before any work: output paths, torch devices, a Ray address, a resumed storage.

Each raises a one-line ``UserError`` naming the offending option and value, and none of them
creates or changes a file, so a bad input stops a command before it trains, profiles or opens
an MLflow run. The MLflow tracking URI is checked in ``tracking.check_tracking_uri`` (the one
module that talks to MLflow).
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tempfile
from pathlib import Path

from gatesearch.errors import UserError

CONNECT_TIMEOUT_S = 5.0  # one TCP connect; a dead host:port is refused at once, a black hole waits this long

_TORCH_DEVICE = re.compile(r"(cpu|cuda(:\d+)?|mps|auto)")


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where a write would create the rest)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(directory: Path, what: str) -> None:
    """Create and at once delete a temporary file in ``directory``: the one test that also holds for
    root (``os.access`` says yes to root on a read-only mount) and leaves nothing behind."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UserError(f"{what}: cannot write in {directory} ({e.strerror or type(e).__name__})") from None


def check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` is (or can be created as) a writable directory; ``what`` names the option (``--out``)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what}: {p} exists and is not a directory")
    base = _first_existing(p)
    if not base.is_dir():
        raise UserError(f"{what}: cannot create {p}: {base} is a file, not a directory")
    _probe_write(base, what)
    return p


def check_output_file(path: str | Path, what: str) -> Path:
    """``path`` can be written as a file: not a directory, its directory writable or creatable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what}: {p} is a directory; give a file name")
    check_output_dir(p.parent, what)
    return p


def atomic_target(path: str | Path) -> Path:
    """The temporary sibling a result is written to before ``os.replace`` puts it at ``path``."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")


def torch_device(name: str, what: str) -> str:
    """``name`` if it is a device this machine has: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    import torch

    if not _TORCH_DEVICE.fullmatch(name):
        raise UserError(f"{what}: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{what}: {name} requested but CUDA is not available")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"{what}: {name} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{what}: mps requested but it is not available")
    return name


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


def check_trusted_storage(storage: Path, study_dir: Path) -> None:
    """``--resume`` unpickles Ray Tune's ``tuner.pkl`` (and the searcher's and trainable's pickles
    beside it) from the study directory, which runs code: refuse a storage that someone else could
    have written (writable by all, or owned by another user than this one or root), from the storage
    directory down to each pickle."""
    me = os.geteuid()
    pickles = sorted(study_dir.glob("*.pkl")) if study_dir.is_dir() else []
    for p in (storage, study_dir, *pickles):
        if not p.exists():
            continue
        st = p.stat()
        if st.st_mode & stat.S_IWOTH:
            raise UserError(f"--resume: {p} is writable by every user; a resumed study unpickles code from it "
                            f"(chmod o-w {p}, or start a new study in another --storage)")
        if st.st_uid not in (me, 0):
            raise UserError(f"--resume: {p} belongs to user id {st.st_uid}, not to you; a resumed study unpickles "
                            "code from it (resume only a storage you trust)")


def check_search(address: str | None, tracking_uri: str, storage: Path, study_dir: Path, resume: bool) -> None:
    """Everything ``gatesearch search`` needs before it opens the study's MLflow parent run or writes its
    marker: a writable storage (trusted, when resumed), a tracking store that answers, a live Ray address."""
    from gatesearch.tracking import check_tracking_uri

    check_output_dir(storage, "--storage")
    if resume:
        check_trusted_storage(storage, study_dir)
    check_tracking_uri(tracking_uri, what="--tracking-uri")
    check_ray_address(address)


def ray_connect_error(address: str, error: BaseException) -> str:
    """The one line for a ``ray.init(address=...)`` that failed although the address answered."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    hint = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
        "; if the cluster uses token auth, export RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    return f"--address {address}: cannot join the Ray cluster ({first}){hint}"
