"""Deploy bundles: one device's menu -> one ONNX file per entry (skipped units removed) + ``bundle.json``.

``write_bundle`` reads a menu (``selection.pareto.read_menu``), checks it was scored from the
checkpoint's model, and exports each chosen entry with ``export.export``: a ``pattern`` entry as its
pruned sub-network, a ``calibrated`` entry (Gated Depth / stochastic depth's full network, gated paths
scaled by ``p_s``) with the method's keep factors baked in as constants. Gate strategies of learned
gates (``threshold:*``, ``always_on``, ``stochastic``, ``ensemble``) decide per input or by sampling,
so they are no static graph: they are listed under ``skipped`` with the reason. The record's format
is ``runtime.py``'s (the reader on the device, which checks every file's ``sha256``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from gatesearch.checkpoint import Checkpoint, load_checkpoint
from gatesearch.data import build_data
from gatesearch.errors import UserError
from gatesearch.export import export
from gatesearch.patterns import SkipPattern
from gatesearch.preflight import atomic_target, check_output_dir
from gatesearch.runtime import BUNDLE_FILE, FORMAT, INPUT_NAME, OUTPUT_NAME, sha256_of
from gatesearch.selection.pareto import Menu, read_menu
from gatesearch.tracking import register_bundle
from gatesearch.train import restore_method

STATIC = ("pattern", "calibrated")  # fixed sub-networks, as ``selection.select.is_fixed``
SELECTIONS = ("pareto", "all")
#: the menu entry columns a bundle entry copies (``runtime.Entry`` reads them back)
COPIED = ("pattern", "strategy", "top1", "top1_low", "top1_high", "macs", "params", "latency_ms",
          "latency_source", "pareto")


@dataclass(frozen=True)
class BundleResult:
    path: Path  # bundle.json
    record: dict[str, Any]


def load_menu(path: str | Path) -> Menu:
    """A menu file (``.json`` or ``.parquet``), or a one-line ``UserError``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--menu: {p} does not exist")
    try:
        return read_menu(p)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--menu: {p} is not a gatesearch menu ({type(e).__name__}: {str(e)[:80]})") from None


def check_same_model(menu: Menu, ck: Checkpoint, where: str) -> None:
    """The menu was scored from ``ck``'s model: same model name, dataset, units, input shape (and number
    of classes where the menu records one); else a ``UserError`` naming the first difference."""
    extras = menu.extras or {}
    pairs = [("model", menu.model, ck.config.model.name), ("dataset", menu.dataset, ck.config.data.name)]
    if "input_shape" in extras:
        pairs.append(("input shape", list(extras["input_shape"]), list(ck.input_shape)))
    if "num_classes" in extras:
        pairs.append(("classes", extras["num_classes"], ck.num_classes))
    lengths = sorted({len(e["pattern"]) for e in menu.entries})
    pairs.append(("units", lengths[0] if len(lengths) == 1 else lengths, ck.model.n_units))
    for what, in_menu, in_ck in pairs:
        if in_menu != in_ck:
            raise UserError(f"the menu is for another model than {where}: {what} {in_menu} in the menu, "
                            f"{in_ck} in the checkpoint")


def skip_reason(entry: dict[str, Any]) -> str | None:
    """Why an entry is not exported as one static graph (None: it is)."""
    s, sup = entry["strategy"], "F" * len(entry["pattern"])
    if s in STATIC:
        return None
    if s.startswith("threshold"):
        why = "gates decided per input by the gate heads (keep where p >= tau), not a static graph"
    elif s == "always_on":
        why = f"every gate on with the gate heads still run; without them it is pattern {sup}, exported as that entry"
    elif s == "stochastic":
        why = "gates sampled per input from the gate heads, not a static graph"
    elif s == "ensemble":
        why = "softmax averaged over runs with gates sampled per input, not a static graph"
    else:
        why = "not a fixed sub-network"
    return f"gate strategy {s!r}: {why}"


def _calibration(ck: Checkpoint) -> Callable[[str], tuple[list[float] | None, str | None]]:
    """``pattern -> (keep factors, None)`` of a calibrated entry, or ``(None, reason)`` when the method's
    ``p_s`` cannot be restored (they depend on the training schedule, so on the training set's size)."""
    state: dict[str, Any] = {}

    def keep_of(pattern: str) -> tuple[list[float] | None, str | None]:
        if "method" not in state:
            try:
                data = build_data(ck.config.data, ck.config.train.seed)
                state["method"] = restore_method(ck.config, ck.model, data, ck.method_state)
            except UserError as e:
                state["method"] = f"calibrated: p_s needs the training data's steps per epoch ({e})"
        method = state["method"]
        if isinstance(method, str):
            return None, method
        gates = method.eval_gates(ck.model, SkipPattern.parse(pattern, ck.model.n_units))
        if not isinstance(gates, torch.Tensor):
            return None, f"calibrated: method {ck.config.method.name} evaluates {pattern} uncalibrated now"
        return [float(v) for v in gates.reshape(-1)], None

    return keep_of


def _file_name(entry: dict[str, Any]) -> str:
    return f"{entry['pattern']}{'' if entry['strategy'] == 'pattern' else '-' + entry['strategy']}.onnx"


def _inputs(menu_path: str | Path, out: str | Path, checkpoint: str | Path | None) -> tuple[Menu, Path, Checkpoint, Path]:
    """The menu, the bundle directory, the checkpoint and its path, checked before anything is written."""
    menu = load_menu(menu_path)
    root = check_output_dir(out, "--out")
    ck_path = Path(checkpoint if checkpoint is not None else menu.checkpoint)
    where = f"checkpoint {ck_path}" + ("" if checkpoint is not None else " (the menu's checkpoint field)")
    if not ck_path.is_file():
        raise UserError(f"{where} does not exist; pass --checkpoint")
    ck = load_checkpoint(ck_path)
    check_same_model(menu, ck, where)
    if menu.bn_mode == "reestimated":
        raise UserError("the menu was scored with BN statistics re-estimated per pattern, which the checkpoint "
                        "does not hold: the files would not be the networks it scored (select with --reestimate-bn 0)")
    return menu, root, ck, ck_path


def write_bundle(menu_path: str | Path, out: str | Path, checkpoint: str | Path | None = None,
                 entries: str = "pareto", batch: int = 1) -> BundleResult:
    """Export ``entries`` (``pareto`` or ``all``) of the menu at ``menu_path`` from ``checkpoint`` (default:
    the menu's ``checkpoint`` field) into ``out``: ``<pattern>[-<strategy>].onnx`` per entry, then
    ``bundle.json``. Bad input (missing menu, another model's menu, ``out`` a file) raises ``UserError``
    before anything is written."""
    if entries not in SELECTIONS:
        raise UserError(f"--entries: {entries!r}; use one of {', '.join(SELECTIONS)}")
    menu, root, ck, ck_path = _inputs(menu_path, out, checkpoint)
    keep_of = _calibration(ck)
    done, skipped = [], []
    for e in (e for e in menu.entries if entries == "all" or e["pareto"]):
        reason = skip_reason(e)
        keep = None
        if reason is None and e["strategy"] == "calibrated":
            keep, reason = keep_of(e["pattern"])
        if reason is not None:
            skipped.append({"pattern": e["pattern"], "strategy": e["strategy"], "top1": e["top1"],
                            "latency_ms": e["latency_ms"], "reason": reason})
            continue
        name = _file_name(e)
        export(ck.model, SkipPattern.parse(e["pattern"], ck.model.n_units), "onnx", root / name,
               tuple(ck.input_shape), batch, keep=keep)
        done.append({**{c: e.get(c) for c in COPIED}, "keep_probs": keep, "file": name,
                     "sha256": sha256_of(root / name)})
    if not done:
        raise UserError(f"no entry of {menu_path} can be exported: " + "; ".join(s["reason"] for s in skipped))
    record = {"format": FORMAT, "model": menu.model, "dataset": menu.dataset, "device": menu.device,
              "num_classes": ck.num_classes, "input_shape": list(ck.input_shape), "input": INPUT_NAME,
              "output": OUTPUT_NAME, "batch": menu.batch, "latency_source": menu.latency_source,
              "bn_mode": menu.bn_mode, "checkpoint": str(ck_path), "menu": str(menu_path), "selected": entries,
              "entries": done, "skipped": skipped}
    return BundleResult(_write_json(root / BUNDLE_FILE, record), record)


def _write_json(path: Path, record: dict[str, Any]) -> Path:
    """``record`` at ``path``, atomically (written last: a bundle.json lists only files that are complete)."""
    text = json.dumps(record, indent=1, allow_nan=False)
    tmp = atomic_target(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def register_menus(menus: Sequence[Menu], out: str | Path, checkpoint: str | Path, uri: str, run_id: str,
                   name: str) -> dict[str, str]:
    """For each device's menu written under ``out/<device>/menu.json``: its bundle (the Pareto entries) in
    ``out/<device>/bundle``, logged to run ``run_id`` and registered as a version of model ``name`` with the
    device as alias (``models:/<name>@<device>``). Returns ``{device: version}``."""
    versions = {}
    for menu in menus:
        folder = Path(out) / menu.device
        write_bundle(folder / "menu.json", folder / "bundle", checkpoint)
        versions[menu.device] = register_bundle(uri, run_id, folder / "bundle", name, menu.device, folder / "menu.json")
    return versions
