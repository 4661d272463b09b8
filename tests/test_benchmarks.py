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
