"""The step-time benchmark runs end to end on a tiny budget and prints what its docs quote."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_prints_base_net_share_and_a_verdict_per_target():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--batch", "4", "--rounds", "2", "--steps", "4",
           "--only", "adn", "gated_depth"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    header, columns, *rows = out.strip().splitlines()
    # resnet20: 2 of 3 blocks mandatory per stage -> the base-net is 0.653 of the super-net's MACs
    assert "model resnet20 (cifar stem, base-net 0.653 of the MACs)" in header
    assert "batch 4x3x32x32" in header and "flush_denormal on" in header
    assert [r.split()[0] for r in rows] == ["plain", "adn", "gated_depth"]
    for row, target in zip(rows[1:], ("1.7", "1.15")):
        m = re.search(r"(\d+\.\d+) +\((\d+\.\d+)-(\d+\.\d+)\) +<= (\S+) +(PASS|FAIL)$", row)
        assert m, row
        ratio, q1, q3 = (float(m.group(i)) for i in (1, 2, 3))
        assert 0 < q1 <= ratio <= q3 and m.group(4) == target
        assert m.group(5) == ("PASS" if ratio <= float(target) else "FAIL") or abs(ratio - float(target)) < 0.005


def test_reproduce_cifar_writes_a_resumable_run_json_and_the_renderer_shows_its_numbers(tmp_path):
    """reproduce_cifar.py on a tiny npz directory (the real CIFAR layout, random pixels): one epoch,
    the JSON with every candidate on val and test, a second call skips the finished run, and
    render_results.py prints exactly the JSON's numbers."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "npz"
    data.mkdir()
    for split, n in (("train", 300), ("test", 60)):
        np.savez(data / f"{split}.npz", images=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, n))
    results, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reproduce_cifar.py"), "--data-root", str(data), "--run",
           "gated_depth", "--epochs", "1", "--work-dir", str(work), "--results-dir", str(results / "t"), "--threads", "1"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    rec = json.loads((results / "t" / "gated_depth.json").read_text())
    assert rec["epochs"] == 1 and rec["n_units"] == 3 and rec["config"]["method.name"] == "gated_depth"
    assert rec["train_commit"] and rec["eval_commit"] and "reproduce_cifar.py" in rec["command"]
    for split, n in (("val", 30), ("test", 60)):
        rows = rec[split]["candidates"]
        assert len(rows) == 8 and all(r["n"] == n for r in rows)
        assert {r["strategy"] for r in rows} == {"pattern", "calibrated"}  # FFF is the calibrated full network
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "done:" in again  # the finished run is skipped
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nkept\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py"), "--table", "t",
                          "--results-root", str(results), "--doc", str(doc)], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    fff = next(r for r in rec["test"]["candidates"] if r["pattern"] == "FFF")
    assert f"{100 * fff['top1']:.2f}*" in out and f"{rec['test']['frontier_score']:.4f}" in out
    assert "kept" in doc.read_text() and (results / "t" / "frontier.png").is_file()
