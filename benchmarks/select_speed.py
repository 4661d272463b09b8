"""Prefix-trie scoring vs naive per-pattern scoring (evaluate/walk.py), one process run.

Both score every skip pattern on the same synthetic batches; the trie runs the stem once per
batch and each (prefix, switch) of the network once, the naive loop runs ``model(x, pattern)``
per pattern. Timings are interleaved (trie, naive, trie, naive, ...) and the median of the
repeats is compared, so load from other processes hits both alike. Also checks the two give
identical correct counts.

    .venv/bin/python benchmarks/select_speed.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from gatesearch.evaluate.walk import evaluate_patterns_naive, evaluate_patterns_trie
from gatesearch.models import create_model
from gatesearch.patterns import all_patterns

SETUPS = [  # (model, gating, stem, images, batch, size)
    ("resnet20", "stage", "cifar", 512, 128, 32),
    ("resnet20", "block", "cifar", 128, 64, 32),
    ("resnet50", "stage", "imagenet", 64, 32, 112),
]


def _time(fn) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"repeats {args.repeats} (interleaved), median seconds, eval mode, no grad")
    print(f"{'model':<9} {'gating':<6} {'units':>5} {'patterns':>8} {'images':>7} {'input':>8}  "
          f"{'trie s':>8} {'naive s':>8} {'speedup':>8}  same counts")
    for name, gating, stem, images, batch, size in SETUPS:
        model = create_model(name, 10, gating=gating, stem=stem).eval()
        data = [(torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))) for _ in range(images // batch)]
        patterns = all_patterns(model.n_units)
        evaluate_patterns_trie(model, data[:1], patterns[:2])  # warm-up (allocator, kernels)
        trie_t, naive_t = [], []
        for _ in range(args.repeats):
            t, trie = _time(lambda m=model, d=data, ps=patterns: evaluate_patterns_trie(m, d, ps))
            trie_t.append(t)
            t, naive = _time(lambda m=model, d=data, ps=patterns: evaluate_patterns_naive(m, d, ps))
            naive_t.append(t)
        same = [(s.correct1, s.correct5) for s in trie] == [(s.correct1, s.correct5) for s in naive]
        a, b = statistics.median(trie_t), statistics.median(naive_t)
        print(f"{name:<9} {gating:<6} {model.n_units:>5} {len(patterns):>8} {images:>7} {size:>4}x{size:<3}  "
              f"{a:8.2f} {b:8.2f} {b / a:7.2f}x  {'yes' if same else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
