"""Ctrl+C for ``gatesearch search``: the study runs in a subprocess against a test module's Ray, and is
interrupted once a condition on what it wrote holds (a finished MLflow run, a stalled trial's checkpoint)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gatesearch.search.trainable import FAULT_ENV

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def interrupt_search(space: Path, uri: str, tmp_path: Path, address: str, fault: str, ready: Callable[[], T],
                     timeout_s: float, sig: int = signal.SIGINT) -> T:
    """``gatesearch search`` of ``space`` (storage ``<tmp_path>/rr``, ``GATESEARCH_FAULT=fault``) in a
    subprocess connected to the Ray at ``address``; Ctrl+C (or ``sig``, e.g. SIGTERM) once ``ready()`` returns
    something true (polled every 0.5 s); asserts it exits 130 (the study's state saved) and returns what
    ``ready`` returned."""
    cmd = [sys.executable, "-m", "gatesearch.cli", "search", "--space", str(space), "--tracking-uri", uri,
           "--storage", str(tmp_path / "rr"), "--address", address]
    log = tmp_path / f"search-{Path(space).stem}.log"  # a file, not a pipe: Ray's worker logs would fill one
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), FAULT_ENV: fault})
        deadline = time.time() + timeout_s
        found = ready()
        while not found and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            found = ready()
        if not found:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise AssertionError(f"nothing to interrupt in {timeout_s:.0f} s (exit {proc.returncode}):\n"
                                 f"{log.read_text()[-3000:]}")
        proc.send_signal(sig)  # Ctrl+C (SIGTERM does the same): Tune saves its state and stops
        proc.wait(timeout=120)
    assert proc.returncode == 130, log.read_text()[-3000:]
    return found
