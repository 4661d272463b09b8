"""Lookup tables (``latency_source: lut``): a CSV measured on the target with ``gatesearch profile``
(``read_lut``); a LUT entry always wins over the roofline model."""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from gatesearch.errors import UserError
from gatesearch.patterns import SkipPattern
from gatesearch.preflight import atomic_target

LUT_COLUMNS = ("pattern", "batch", "median_ms", "p90_ms", "runs", "device")


@dataclass(frozen=True)
class LutRow:
    pattern: str  # T/F pattern, or "unit:<i>" for one unit's blocks alone
    batch: int
    median_ms: float
    p90_ms: float
    runs: int
    device: str
    line: int = field(default=0, compare=False)  # the CSV line it was read from (0: measured, not read)


def write_lut(path: str | Path, rows: Iterable[LutRow]) -> Path:
    """Write the CSV to a temporary sibling, then rename it: a failed write leaves no half table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_target(path)
    try:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LUT_COLUMNS)
            for r in rows:
                w.writerow([r.pattern, r.batch, f"{r.median_ms:.6f}", f"{r.p90_ms:.6f}", r.runs, r.device])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _lut_row(rec: dict[str, str], line: int) -> LutRow:
    """One CSV record as a ``LutRow``; a ValueError names the bad field (latencies finite, >= 0)."""
    pat = rec["pattern"].strip()
    if not pat.startswith("unit:"):
        pat = str(SkipPattern.parse(pat))
    elif int(pat[5:]) < 0:
        raise ValueError(f"unit index {pat[5:]} is negative")
    row = LutRow(pat, int(rec["batch"]), float(rec["median_ms"]), float(rec["p90_ms"]), int(rec["runs"]),
                 rec["device"].strip(), line)
    for name in ("median_ms", "p90_ms"):
        value = getattr(row, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite latency >= 0, got {value}")
    if row.p90_ms < row.median_ms:  # a 90th percentile below the median is no measurement
        raise ValueError(f"p90_ms {row.p90_ms} is below median_ms {row.median_ms}")
    if row.batch < 1 or row.runs < 1:
        raise ValueError(f"batch and runs must be >= 1, got batch {row.batch}, runs {row.runs}")
    if not row.device:
        raise ValueError("empty device")
    return row


def read_lut(path: str | Path) -> list[LutRow]:
    """Parse a LUT CSV; any problem is a ``UserError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LUT file {path} does not exist")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"LUT {path}: not a UTF-8 text file (byte {e.start}); expected the CSV of `gatesearch profile`") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in LUT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"LUT {path}: missing columns {missing}; expected {','.join(LUT_COLUMNS)}")
    first: dict[tuple[str, int, str], int] = {}
    for line, rec in enumerate(reader, start=2):
        try:
            row = _lut_row(rec, line)
        except (ValueError, TypeError, AttributeError) as e:
            raise UserError(f"LUT {path} line {line}: malformed row ({e})") from None
        key = (row.pattern, row.batch, row.device)
        if key in first:  # which of two measurements should count is a guess: refuse rather than keep the last
            raise UserError(f"LUT {path} line {line}: pattern {row.pattern} at batch {row.batch} on {row.device} "
                            f"is already measured on line {first[key]}")
        first[key] = line
        rows.append(row)
    if not rows:
        raise UserError(f"LUT {path} has no rows")
    return rows


def check_lut(rows: Sequence[LutRow], n_units: int) -> None:
    """Every row fits a model with ``n_units`` units (pattern length, ``unit:<i>`` index): checked before any
    scoring, a ``UserError`` naming the row's line."""
    for r in rows:
        if r.pattern.startswith("unit:") and int(r.pattern[5:]) >= n_units:
            raise UserError(f"LUT line {r.line}: {r.pattern} names a unit this model lacks (units 0..{n_units - 1})")
        if not r.pattern.startswith("unit:") and len(r.pattern) != n_units:
            raise UserError(f"LUT line {r.line}: pattern {r.pattern} has {len(r.pattern)} units; this model has {n_units}")


def lut_lookup(rows: Sequence[LutRow], n_units: int, batch: int) -> dict[str, LutRow]:
    """Pattern -> row for ``batch``; a row that does not fit the model is a ``UserError`` (``check_lut``)."""
    check_lut(rows, n_units)
    return {r.pattern: r for r in rows if not r.pattern.startswith("unit:") and r.batch == batch}


def lut_compose(rows: Sequence[LutRow], pattern: str, batch: int) -> tuple[float, float] | None:
    """(median_ms, p90_ms) of a pattern the LUT lacks, composed additively from its base-net row and
    its ``unit:<i>`` rows (base + each kept unit); None when those rows are missing."""
    base = next((r for r in rows if r.batch == batch and r.pattern == "T" * len(pattern)), None)
    units = {int(r.pattern[5:]): r for r in rows if r.batch == batch and r.pattern.startswith("unit:")}
    kept = [u for u, c in enumerate(pattern) if c == "F"]
    if base is None or any(u not in units for u in kept):
        return None
    return (base.median_ms + sum(units[u].median_ms for u in kept), base.p90_ms + sum(units[u].p90_ms for u in kept))
