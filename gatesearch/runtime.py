"""Run a deploy bundle on the device: load it, pick the sub-network a latency budget allows, run it.

Imports only numpy and onnxruntime (and the standard library): no torch, Ray or MLflow, and nothing
else of gatesearch, so ``from gatesearch import runtime`` works on a device that has only those two.

A bundle is a directory written by ``gatesearch export --menu MENU.json --out DIR``
(``gatesearch.bundle``): one ONNX file per menu entry (input ``x [B, C, H, W]`` float32, output
``logits [B, num_classes]``, dynamic batch) and ``bundle.json`` (``BUNDLE_FILE``) listing each
entry's pattern, strategy, top-1 (with its interval where the menu had one), MACs, params,
``latency_ms`` on the menu's device with its source, file name and sha256. ``Bundle.load`` checks
every file against its sha256 before anything runs. ``run`` keeps one ``InferenceSession`` per
entry, created at the entry's first use, so switching sub-networks afterwards loads no file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

BUNDLE_FILE = "bundle.json"
FORMAT = 1  # bumped when a reader of the old bundle.json would misread the new one
INPUT_NAME, OUTPUT_NAME = "x", "logits"


class BundleError(Exception):
    """A bundle that cannot be used: a missing, unreadable or tampered file, or a malformed record."""


class NothingFits(BundleError):
    """No entry's ``latency_ms`` is within the budget."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    """One exported sub-network. ``pattern``: T/F per unit, T = skipped; ``strategy``: ``pattern`` or
    ``calibrated`` (gated paths scaled by ``keep_probs``); ``top1`` (fraction) with its 95 % interval
    ``top1_low``/``top1_high`` (None where the menu had none); ``latency_ms`` on the bundle's device at
    the menu's batch, ``latency_source`` ``measured`` | ``lut`` | ``model``; ``file`` relative to the
    bundle directory."""

    pattern: str
    strategy: str
    top1: float
    top1_low: float | None
    top1_high: float | None
    macs: int
    params: int
    latency_ms: float
    latency_source: str
    file: str
    sha256: str
    pareto: bool = True
    keep_probs: tuple[float, ...] | None = None

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Entry:
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - set(d) if n not in ("pareto", "keep_probs"))
        if missing:
            raise BundleError(f"{BUNDLE_FILE}: entry {d.get('pattern')!r} lacks {', '.join(missing)}")
        kp = d.get("keep_probs")
        return cls(**{k: v for k, v in d.items() if k in names and k != "keep_probs"},
                   keep_probs=None if kp is None else tuple(kp))


def check_budget(budget_ms: Any) -> float:
    """``budget_ms`` as a float if it is a positive finite number, else ``ValueError``."""
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float, np.integer, np.floating)):
        raise ValueError(f"budget_ms must be a positive number of milliseconds, got {budget_ms!r}")
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ValueError(f"budget_ms must be a positive finite number of milliseconds, got {budget_ms!r}")
    return float(budget_ms)


class Bundle:
    """A loaded bundle: ``record`` (``bundle.json`` as read), ``entries`` (exported, in file order),
    ``skipped`` (menu entries that are not a static graph, with ``reason``), ``input_shape`` (C, H, W)."""

    def __init__(self, root: Path, record: dict[str, Any], providers: Sequence[str] | None = None,
                 options: ort.SessionOptions | None = None) -> None:
        self.root = root
        self.record = record
        self.entries = [Entry.from_record(e) for e in record["entries"]]
        self.skipped: list[dict[str, Any]] = list(record.get("skipped", []))
        self.input_shape = tuple(int(v) for v in record["input_shape"])
        self.providers = list(providers) if providers is not None else ort.get_available_providers()
        self.options = options
        self._sessions: dict[str, ort.InferenceSession] = {}  # entry file -> its session

    @classmethod
    def load(cls, directory: str | Path, providers: Sequence[str] | None = None,
             options: ort.SessionOptions | None = None) -> Bundle:
        """Read ``directory/bundle.json`` and check every entry's file against its sha256 (a missing or
        changed file raises ``BundleError`` naming it). ``providers``: onnxruntime execution providers,
        in order of preference (default: all this onnxruntime build has, e.g. TensorRT, CUDA, CPU)."""
        root = Path(directory)
        path = root / BUNDLE_FILE
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise BundleError(f"{path} does not exist (not a bundle directory?)") from None
        except (OSError, ValueError) as e:
            raise BundleError(f"{path} cannot be read as JSON ({e})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise BundleError(f"{path}: not a gatesearch bundle of format {FORMAT}")
        try:
            bundle = cls(root, record, providers, options)
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{path}: malformed ({type(e).__name__}: {e})") from None
        if not bundle.entries:
            raise BundleError(f"{path}: the bundle has no entries")
        for e in bundle.entries:
            f = root / e.file
            if not f.is_file():
                raise BundleError(f"{f}: file of entry {e.pattern} ({e.strategy}) is missing")
            if sha256_of(f) != e.sha256:
                raise BundleError(f"{f}: sha256 does not match {BUNDLE_FILE} (file changed or corrupt); "
                                  "re-export the bundle")
        return bundle

    def pick(self, budget_ms: float) -> Entry:
        """The most accurate entry whose ``latency_ms`` is within ``budget_ms`` (ties: the faster).
        ``NothingFits`` when none is; ``ValueError`` when the budget is not a positive finite number."""
        budget = check_budget(budget_ms)
        fits = [e for e in self.entries if e.latency_ms <= budget]
        if not fits:
            cheapest = min(self.entries, key=lambda e: e.latency_ms)
            raise NothingFits(f"no entry fits {budget:g} ms on {self.record.get('device')}: the cheapest, "
                              f"{cheapest.pattern} ({cheapest.strategy}), takes {cheapest.latency_ms:g} ms")
        return max(fits, key=lambda e: (e.top1, -e.latency_ms))

    def session(self, entry: Entry) -> ort.InferenceSession:
        """``entry``'s onnxruntime session: created (the file read) on first use, then kept."""
        s = self._sessions.get(entry.file)
        if s is None:
            s = ort.InferenceSession(str(self.root / entry.file), sess_options=self.options,
                                     providers=self.providers)
            self._sessions[entry.file] = s
        return s

    def run(self, x: np.ndarray, budget_ms: float) -> np.ndarray:
        """Logits ``[B, num_classes]`` of ``x [B, C, H, W]`` (float32, normalised as in training) from the
        entry ``pick(budget_ms)`` chooses."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must be [B, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        (logits,) = self.session(self.pick(budget_ms)).run([OUTPUT_NAME], {INPUT_NAME: x})
        return logits
