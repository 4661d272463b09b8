"""bundle.py / ``gatesearch export --menu``: a device's menu becomes one ONNX file per entry whose
onnxruntime outputs are the gated model's for that entry (every backbone family), ``bundle.json``
records each entry, gate strategies are listed as skipped, and bad input stops with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from _training import one_thread, quick_cfg

from gatesearch.bundle import write_bundle
from gatesearch.checkpoint import build_model, load_checkpoint, save_checkpoint
from gatesearch.cli import main
from gatesearch.data import build_data
from gatesearch.patterns import SkipPattern, all_patterns
from gatesearch.runtime import BUNDLE_FILE, sha256_of
from gatesearch.selection.pareto import build_menu, write_menu
from gatesearch.train import restore_method

_one_thread = pytest.fixture(autouse=True)(one_thread)  # tiny models: one thread is faster
SHAPE = (3, 32, 32)
FAMILIES = ("resnet20", "mobilenet_v2_x0_5", "vit_ti_4", "swin_nano_2")  # the small variant of each backbone


def make_checkpoint(root: Path, name: str, method: str = "plain", **flat: Any) -> Path:
    """A checkpoint of ``name`` with random weights and distinct norm statistics and affines in every
    norm (so a wrong switchable set shows), on synthetic 3x32x32 data; nothing trained."""
    flat = {"model__name": name, "data__name": "synthetic", "data__synthetic_size": 64, **flat}
    cfg = quick_cfg(str(root), method=method, **flat)
    torch.manual_seed(0)
    model = build_model(cfg, 10, SHAPE)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return save_checkpoint(root / f"{name}.pt", model.eval(), cfg, epoch=0, metrics={}, input_shape=SHAPE,
                           num_classes=10, method_state={"last_step": 37.0})


def menu_entry(pattern: str, strategy: str = "pattern", **over: Any) -> dict[str, Any]:
    """A scored menu row: latency and top-1 rise with the units kept; among patterns that keep as many
    units, top-1 differs (by the pattern read as binary, F = 1), so each count has one Pareto entry."""
    kept = pattern.count("F")
    rank = int(pattern.replace("F", "1").replace("T", "0"), 2) / 2 ** len(pattern)  # in [0, 1)
    e = {"pattern": pattern, "strategy": strategy, "top1": 0.5 + 0.05 * kept + 0.04 * rank,
         "top1_low": 0.45 + 0.05 * kept, "top1_high": 0.55 + 0.05 * kept, "n_eval": 400, "top1_seed_std": None,
         "n_seeds": 0, "top5": 0.9, "top1_std": 0.0, "macs": 1000 * (kept + 1), "params": 100 * (kept + 1),
         "bytes": 0, "latency_ms": 1.0 + 0.5 * kept, "latency_p90_ms": 1.1 + 0.5 * kept, "latency_source": "lut",
         "activation": kept / len(pattern), "unit_rates": [0.0 if c == "T" else 1.0 for c in pattern]}
    return {**e, **over}


def make_menu(root: Path, ck: Path, entries: list[dict[str, Any]], bn_mode: str = "switchable", **meta: Any) -> Path:
    c = load_checkpoint(ck)
    fields = {"model": c.config.model.name, "dataset": c.config.data.name, "device": "jetson-orin-nano",
              "checkpoint": str(ck), "bn_mode": bn_mode, "search": "exhaustive", "batch": 1,
              "extras": {"input_shape": list(SHAPE)}, **meta}
    json_path, _ = write_menu(build_menu(entries, **fields), root / "menu")
    return json_path


def assert_entries_match(bundle_dir: Path, ck: Path, gates_of: Any = None) -> list[dict[str, Any]]:
    """Every entry's ONNX file, in onnxruntime, gives the gated model's logits for its pattern (1e-4)."""
    record = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    model = load_checkpoint(ck).model
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(5))
    for e in record["entries"]:
        assert sha256_of(bundle_dir / e["file"]) == e["sha256"]
        sess = ort.InferenceSession(str(bundle_dir / e["file"]), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": x.numpy()})
        p = SkipPattern.parse(e["pattern"])
        with torch.no_grad():
            ref = model(x, gates_of(p) if gates_of else p).numpy()
        assert np.abs(y - ref).max() <= 1e-4, (e["pattern"], e["strategy"], np.abs(y - ref).max())
    return record["entries"]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # torchvision's Swin pads by Python ints: static at 32x32
@pytest.mark.parametrize("name", FAMILIES)
def test_every_pareto_entry_matches_the_gated_model(tmp_path: Path, name: str) -> None:
    ck = make_checkpoint(tmp_path, name)
    n = load_checkpoint(ck).model.n_units
    patterns = [str(p) for p in all_patterns(n)][:: max(1, 2 ** n // 8)]  # 8 of them, super- and base-net among
    patterns = sorted({*patterns, "F" * n, "T" * n})
    entries = [menu_entry(p) for p in patterns] + [menu_entry("F" * n, "threshold:0.50", latency_ms=1.25, top1=0.52)]
    out = tmp_path / "bundle"
    result = write_bundle(make_menu(tmp_path, ck, entries), out)
    record = result.record
    menu = {(e["pattern"], e["strategy"]): e for e in json.loads((tmp_path / "menu" / "menu.json").read_text())["entries"]}
    pareto = {k for k, e in menu.items() if e["pareto"] and e["strategy"] == "pattern"}
    assert {(e["pattern"], e["strategy"]) for e in record["entries"]} == pareto
    assert len(pareto) < len(patterns)  # the default really leaves the dominated entries out
    for e in record["entries"]:
        m = menu[(e["pattern"], e["strategy"])]
        for c in ("top1", "top1_low", "top1_high", "macs", "params", "latency_ms", "latency_source"):
            assert e[c] == m[c], c
        assert e["file"] == f"{e['pattern']}.onnx" and e["keep_probs"] is None
    (skip,) = record["skipped"]
    assert skip["strategy"] == "threshold:0.50" and "decided per input" in skip["reason"]
    assert not any("threshold" in f.name for f in out.iterdir())
    assert (record["model"], record["dataset"], record["device"], record["input_shape"]) == (
        name, "synthetic", "jetson-orin-nano", list(SHAPE))
    assert_entries_match(out, ck)


def test_a_gate_head_model_exports_its_patterns_and_lists_its_strategies(tmp_path: Path) -> None:
    """Probgates on ResNet-20 with a gate on every block (9 units, the downsampling ones included): the
    patterns export (gate heads left out), each inference strategy is listed with why it is left out."""
    ck = make_checkpoint(tmp_path, "resnet20", method="probgates", model__gate_head="aig", model__gating="block")
    patterns = ["FFFFFFFFF", "TTTTTTTTT", "FFFTFFTFF", "TFTFTFTFT"]  # units 3 and 6 change the shape
    strategies = ["threshold:0.50", "always_on", "stochastic", "ensemble"]
    entries = [menu_entry(p) for p in patterns] + [menu_entry("FFFFFFFFF", s) for s in strategies]
    record = write_bundle(make_menu(tmp_path, ck, entries), tmp_path / "b", entries="all").record
    assert [e["pattern"] for e in record["entries"]] == patterns
    reasons = {s["strategy"]: s["reason"] for s in record["skipped"]}
    assert list(reasons) == strategies
    assert "decided per input" in reasons["threshold:0.50"] and "pattern FFFFFFFFF" in reasons["always_on"]
    assert "sampled per input" in reasons["stochastic"] and "averaged" in reasons["ensemble"]
    assert_entries_match(tmp_path / "b", ck)


def test_all_entries_and_a_calibrated_full_network(tmp_path: Path) -> None:
    """Gated Depth's calibrated full network becomes a static graph with its p_s baked in: equal to the
    gated model under the method's calibrated gates, not to the plain super-net."""
    ck = make_checkpoint(tmp_path, "resnet20", method="gated_depth")
    entries = [menu_entry(str(p)) for p in all_patterns(3) if str(p) != "FFF"] + [menu_entry("FFF", "calibrated")]
    out = tmp_path / "bundle"
    record = write_bundle(make_menu(tmp_path, ck, entries), out, entries="all").record
    assert len(record["entries"]) == 8 and record["skipped"] == []
    c = load_checkpoint(ck)
    method = restore_method(c.config, c.model, build_data(c.config.data, c.config.train.seed), c.method_state)
    (cal,) = [e for e in record["entries"] if e["strategy"] == "calibrated"]
    assert cal["file"] == "FFF-calibrated.onnx"
    gates = method.eval_gates(c.model, SkipPattern.parse("FFF"))
    assert cal["keep_probs"] == pytest.approx(gates[0].tolist()) and min(cal["keep_probs"]) < 1.0
    assert_entries_match(out, ck, gates_of=lambda p: method.eval_gates(c.model, p))
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():  # the calibration is visible: the plain super-net differs
        assert (c.model(x, gates) - c.model(x, SkipPattern.parse("FFF"))).abs().max() > 1e-3


def test_calibrated_entry_without_its_training_data_is_skipped(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path, "resnet20", method="gated_depth", data__name="cifar10",
                         data__root=str(tmp_path / "nowhere"))
    entries = [menu_entry("FFF", "calibrated"), menu_entry("TTT")]
    record = write_bundle(make_menu(tmp_path, ck, entries), tmp_path / "b", entries="all").record
    assert [e["pattern"] for e in record["entries"]] == ["TTT"]
    (skip,) = record["skipped"]
    assert skip["strategy"] == "calibrated" and "steps per epoch" in skip["reason"] and "nowhere" in skip["reason"]


def test_cli_writes_a_bundle_from_the_menus_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = make_checkpoint(tmp_path, "resnet20")
    menu = make_menu(tmp_path, ck, [menu_entry(str(p)) for p in all_patterns(3)])
    assert main(["export", "--menu", str(menu), "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "b" / BUNDLE_FILE).read_text())
    assert record["checkpoint"] == str(ck) and len(record["entries"]) == 4  # one per number of units kept
    assert f"wrote {tmp_path / 'b' / BUNDLE_FILE}" in printed and "FFF.onnx" in printed


def _bad(tmp_path: Path, case: str) -> tuple[list[str], str]:
    ck = make_checkpoint(tmp_path, "resnet20")
    menu = make_menu(tmp_path, ck, [menu_entry("FFF"), menu_entry("TTT")])
    out = str(tmp_path / "out")
    if case == "other model":
        other = make_checkpoint(tmp_path, "mobilenet_v2_x0_5")
        return ["--menu", str(menu), "--checkpoint", str(other), "--out", out], "menu is for another model"
    if case == "other units":
        other = make_menu(tmp_path, ck, [menu_entry("FFFF"), menu_entry("TTTT")])
        return ["--menu", str(other), "--out", out], "units 4 in the menu, 3 in the checkpoint"
    if case == "missing menu":
        return ["--menu", str(tmp_path / "no.json"), "--out", out], "does not exist"
    if case == "out is a file":
        Path(out).write_text("x")
        return ["--menu", str(menu), "--out", out], "exists and is not a directory"
    if case == "reestimated":
        other = make_menu(tmp_path, ck, [menu_entry("FFF")], bn_mode="reestimated")
        return ["--menu", str(other), "--out", out], "re-estimated"
    if case == "only strategies":
        other = make_menu(tmp_path, ck, [menu_entry("FFF", "stochastic")])
        return ["--menu", str(other), "--out", out], "no entry of"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["other model", "other units", "missing menu", "out is a file", "reestimated",
                                  "only strategies"])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    argv, message = _bad(tmp_path, case)
    capsys.readouterr()
    before = sorted(tmp_path.rglob("*"))
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert sorted(tmp_path.rglob("*")) == before
