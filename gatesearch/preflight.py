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


# What Tune deserialises when a study is restored (``Tuner.restore``, ``ExperimentAnalysis``): the tuner, the
# experiment state (JSON with cloudpickle fallbacks), the search generator's and the searcher's state (pickles,
# whatever the suffix) and, per trial directory, its config and its error (pickles).
_UNPICKLED = ("*.pkl", "experiment_state-*.json", "search_gen_state-*.json", "basic-variant-state-*.json")
_WRITE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _refuse_untrusted(path: Path, me: int) -> None:
    """``path`` is a real directory or regular file (no link, no device), owned by ``me`` or root, that neither
    its group nor other users can write."""
    st = os.lstat(path)
    why = ""
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        why = "is a symbolic link or special file, not one Tune wrote"
    elif st.st_uid not in (me, 0):
        why = f"belongs to user id {st.st_uid}, not to you"
    elif st.st_mode & _WRITE_BY_OTHERS:
        why = "is writable by every user" if st.st_mode & stat.S_IWOTH else "is writable by its group"
    if why:
        raise UserError(f"--resume: {path} {why}; a resumed study unpickles code from it (resume only a storage "
                        f"you trust: chmod -R go-w it, or start the study in a new --storage)")


def check_trusted_storage(storage: Path, *experiment_dirs: Path) -> None:
    """``--resume`` unpickles what Tune saved in each experiment directory (a study's, its re-evaluation's),
    which runs code: refuse it unless every such file and every directory from ``storage`` down to it is a
    plain file or directory owned by this user or root that neither its group nor other users can write.
    Checked: ``storage``; each experiment directory, its top-level files (``tuner.pkl``, ``experiment_state-*``,
    the searcher's and search generator's state, the study's JSON records) and its subdirectories; each
    subdirectory's pickles (a trial's ``params.pkl``, ``error.pkl``). Checkpoints are not: they are loaded with
    ``torch.load(weights_only=True)``."""
    me = os.geteuid()
    if storage.exists() or storage.is_symlink():
        _refuse_untrusted(storage, me)
    for directory in experiment_dirs:
        if not (directory.exists() or directory.is_symlink()):
            continue
        _refuse_untrusted(directory, me)
        if not directory.is_dir():  # a file in its place: nothing Tune restores (the search refuses it later)
            continue
        for entry in sorted(directory.iterdir()):
            _refuse_untrusted(entry, me)
            if entry.is_dir() and not entry.is_symlink():
                for pattern in _UNPICKLED:
                    for p in sorted(entry.glob(pattern)):
                        _refuse_untrusted(p, me)
