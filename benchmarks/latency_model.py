"""Roofline latency model (host profile) vs latency measured on this host, over all patterns.

The host profile's figures come from its own micro-benchmark (matmul peak, copy bandwidth,
tiny-op overhead, a fixed set of generic convs for efficiency), never from these networks.
Measurements are interleaved across patterns (warm-up, then ``runs`` rounds, median per
pattern). Prints Spearman rank correlation and mean absolute % error per network and batch.

    .venv/bin/python benchmarks/latency_model.py [--runs 20] [--threads 1] [--batch 1 --batch 8]
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from scipy.stats import spearmanr

from gatesearch.devices.profiles import get_device
from gatesearch.devices.roofline import predict_ms, trace_layers
from gatesearch.devices.timing import measure_ms
from gatesearch.models import create_model
from gatesearch.patterns import all_patterns

NETS = [("resnet20", "cifar", 32, 60), ("resnet50", "imagenet", 224, 12)]  # (model, stem, size, runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=None, help="timed rounds (default: 60 resnet20, 12 resnet50)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, action="append", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = args.batch or [1]
    host = get_device("host")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"host profile (micro-benchmark): peak {host.peak_tflops_fp32 * 1e3:.1f} GFLOP/s, bandwidth "
          f"{host.mem_bandwidth_gbs:.1f} GB/s, kernel overhead {host.launch_overhead_us:.1f} us, conv overhead "
          f"{host.conv_overhead_us:.1f} us, module call {host.module_overhead_us:.2f} us, efficiency {host.efficiency:.2f}")
    print(f"{'model':<9} {'batch':>5} {'patterns':>8}  {'spearman':>8} {'MAPE':>7}  {'pred FFF..TTT ms':>18} "
          f"{'meas FFF..TTT ms':>18}")
    for name, stem, size, runs in NETS:
        model = create_model(name, 10, gating="stage", stem=stem).eval()
        patterns = all_patterns(model.n_units)
        for batch in batches:
            shape = (batch, 3, size, size)
            pred = [predict_ms(trace_layers(model, p, shape), host) for p in patterns]
            meas = [med for med, _ in measure_ms(model, patterns, shape, warmup=3, runs=args.runs or runs)]
            rho = spearmanr(pred, meas)[0]
            mape = 100 * sum(abs(p - m) / m for p, m in zip(pred, meas)) / len(meas)
            print(f"{name:<9} {batch:>5} {len(patterns):>8}  {rho:8.3f} {mape:6.1f}%  "
                  f"{pred[0]:8.2f}..{pred[-1]:<8.2f} {meas[0]:8.2f}..{meas[-1]:<8.2f}", flush=True)


if __name__ == "__main__":
    main()
