"""Checks that run before any work: output paths, torch devices, a resumed storage.

Each raises a one-line ``UserError`` naming the offending option and value, and none of them
creates or changes a file, so a bad input stops a command before it trains, profiles or opens
an MLflow run. The MLflow tracking URI is checked in ``tracking.check_tracking_uri`` (the one
module that talks to MLflow), a Ray address in ``search.preflight`` (the only Ray importers).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from gatesearch.errors import UserError

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
    import torch  # lazy: path checks answer without importing torch

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
