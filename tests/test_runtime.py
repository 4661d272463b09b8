"""runtime.py: a bundle loads only when every file matches its sha256, ``pick`` honours budgets (the most
accurate entry that fits, ties to the faster, a clear error below the cheapest), ``run`` keeps one
session per entry, and the module imports and runs where torch cannot be imported."""

from __future__ import annotations

import ast
import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_bundle import SHAPE, make_checkpoint, make_menu, menu_entry

from gatesearch import runtime
from gatesearch.bundle import write_bundle
from gatesearch.checkpoint import load_checkpoint
from gatesearch.patterns import SkipPattern, all_patterns
from gatesearch.runtime import BUNDLE_FILE, Bundle, BundleError, NothingFits

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A resnet20 bundle of all 8 patterns (latency and top-1 rise with the units kept)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rt")
    ck = make_checkpoint(root, "resnet20")
    write_bundle(make_menu(root, ck, [menu_entry(str(p)) for p in all_patterns(3)]), root / "bundle", entries="all")
    torch.set_num_threads(threads)
    return {"dir": root / "bundle", "checkpoint": ck}


def _entry(pattern: str, top1: float, latency_ms: float) -> dict[str, Any]:
    return {"pattern": pattern, "strategy": "pattern", "top1": top1, "top1_low": None, "top1_high": None,
            "macs": 1, "params": 1, "latency_ms": latency_ms, "latency_source": "lut", "file": f"{pattern}.onnx",
            "sha256": "0" * 64}


def _hand_bundle(entries: list[dict[str, Any]]) -> Bundle:
    """A bundle object over a hand-written record (``pick`` reads no file)."""
    record = {"format": runtime.FORMAT, "device": "jetson-orin-nano", "input_shape": [3, 32, 32], "entries": entries}
    return Bundle(Path("."), record, providers=["CPUExecutionProvider"])


def test_pick_the_most_accurate_within_the_budget() -> None:
    b = _hand_bundle([_entry("TT", 0.70, 1.0), _entry("FT", 0.80, 2.0), _entry("TF", 0.80, 1.5),
                      _entry("FF", 0.90, 3.0)])
    assert b.pick(100).pattern == "FF"
    assert b.pick(3.0).pattern == "FF"  # a budget equal to an entry's latency admits it
    assert b.pick(2.99).pattern == "TF"  # FT and TF tie at 0.80: the faster
    assert b.pick(1.49).pattern == "TT"
    with pytest.raises(NothingFits, match=r"no entry fits 0.5 ms on jetson-orin-nano: the cheapest, TT "
                                          r"\(pattern\), takes 1 ms"):
        b.pick(0.5)


@pytest.mark.parametrize("budget", [0, -1.0, math.nan, math.inf, "2", None, True])
def test_a_budget_that_is_not_a_positive_finite_number_raises(budget: Any) -> None:
    with pytest.raises(ValueError, match="budget_ms must be a positive"):
        _hand_bundle([_entry("T", 0.5, 1.0)]).pick(budget)


def test_pick_on_an_exported_bundle(bundle_dir: dict[str, Path]) -> None:
    b = Bundle.load(bundle_dir["dir"])
    by = {e.pattern: e for e in b.entries}
    assert b.pick(by["FFF"].latency_ms).pattern == "FFF"
    assert b.pick(by["FFF"].latency_ms - 1e-9).pattern == "FFT"  # the best of the two-unit patterns
    assert b.pick(by["TTT"].latency_ms).pattern == "TTT"
    with pytest.raises(NothingFits, match=f"takes {by['TTT'].latency_ms:g} ms"):
        b.pick(by["TTT"].latency_ms / 2)


@pytest.mark.parametrize("damage", ["flip a byte", "delete"])
def test_a_tampered_or_missing_file_is_refused(bundle_dir: dict[str, Path], tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir["dir"], copy)
    target = copy / "FTF.onnx"
    if damage == "delete":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="FTF.onnx: " + ("sha256 does not match" if damage != "delete" else "file")):
        Bundle.load(copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path)
    (tmp_path / BUNDLE_FILE).write_text(json.dumps({"format": 99, "entries": []}))
    with pytest.raises(BundleError, match="not a gatesearch bundle of format 1"):
        Bundle.load(tmp_path)
    (tmp_path / BUNDLE_FILE).write_text(json.dumps({"format": 1, "entries": [{"pattern": "FF"}]}))
    with pytest.raises(BundleError, match="entry 'FF' lacks "):
        Bundle.load(tmp_path)
    (tmp_path / BUNDLE_FILE).write_text(json.dumps({"format": 1, "entries": []}))
    with pytest.raises(BundleError, match=r"malformed \(KeyError: 'input_shape'\)"):
        Bundle.load(tmp_path)


def test_run_gives_the_picked_entrys_logits_and_keeps_sessions(bundle_dir: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []
    real = runtime.ort.InferenceSession

    def counting(path: str, **kw: Any) -> Any:
        created.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(runtime.ort, "InferenceSession", counting)
    b = Bundle.load(bundle_dir["dir"], providers=["CPUExecutionProvider"])
    by = {e.pattern: e for e in b.entries}
    model = load_checkpoint(bundle_dir["checkpoint"]).model
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    for pattern in ["FFF", "TTT", "FFF", "FFT", "TTT", "FFT", "FFF"]:  # switch back and forth
        assert b.pick(by[pattern].latency_ms).pattern == pattern
        y = b.run(x, by[pattern].latency_ms)
        with torch.no_grad():
            ref = model(torch.from_numpy(x), SkipPattern.parse(pattern)).numpy()
        assert np.abs(y - ref).max() <= 1e-4, pattern
    assert created == ["FFF.onnx", "TTT.onnx", "FFT.onnx"]  # one session per entry, at its first use
    with pytest.raises(ValueError, match=r"x must be \[B, 3, 32, 32\], got \[2, 3, 16, 16\]"):
        b.run(x[:, :, :16, :16], 100.0)


def test_runtime_imports_only_numpy_onnxruntime_and_the_standard_library() -> None:
    tree = ast.parse((ROOT / "gatesearch" / "runtime.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert names - set(sys.stdlib_module_names) == {"numpy", "onnxruntime"}


def test_runtime_runs_where_torch_cannot_be_imported(bundle_dir: dict[str, Path], tmp_path: Path) -> None:
    """A subprocess whose path puts a ``torch`` (and ``mlflow``, ``ray``) that raises ImportError first:
    ``from gatesearch import runtime`` loads the bundle and runs the picked entry."""
    for name in ("torch", "mlflow", "ray"):
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(f"raise ImportError('no {name} on this device')\n")
    x = np.random.default_rng(1).standard_normal((2, *SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        try:
            import torch  # noqa: F401
        except ImportError as e:
            print("blocked:", e)
        else:
            raise SystemExit("torch imported")
        from gatesearch import runtime
        b = runtime.Bundle.load({str(bundle_dir['dir'])!r}, providers=["CPUExecutionProvider"])
        budget = sorted(e.latency_ms for e in b.entries)[-2]
        np.save({str(tmp_path / 'y.npy')!r}, b.run(np.load({str(tmp_path / 'x.npy')!r}), budget))
        print("picked", b.pick(budget).pattern)
        assert not {{"torch", "mlflow", "ray"}} & set(sys.modules), sorted(sys.modules)
    """)
    env = {"PYTHONPATH": f"{tmp_path / 'blocked'}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "blocked: no torch on this device" in r.stdout and "picked FFT" in r.stdout
    model = load_checkpoint(bundle_dir["checkpoint"]).model
    with torch.no_grad():
        ref = model(torch.from_numpy(x), SkipPattern.parse("FFT")).numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - ref).max() <= 1e-4
