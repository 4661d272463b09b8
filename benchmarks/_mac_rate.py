"""The achieved multiply-accumulate rate of a training step against the machine's own peak, measured in the
same run (issue #25 item 6): shared by ``train_step.py`` and ``gpu_check.py``."""

from __future__ import annotations

import statistics
import time

import torch

from gatesearch.flops import flop_counter
from gatesearch.train import Trainer


def step_macs(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Multiply-accumulates of one training step (forward, backward and every extra pass the method makes,
    averaged over ``steps`` steps: a multiple of gated_depth's k), counted by torch's flop counter (FLOPs / 2)."""
    with flop_counter() as counter:
        for s in range(steps):
            trainer.step(x, y, s, 0)
    return counter.get_total_flops() / 2 / steps


def peak_macs(device: torch.device, dtype: torch.dtype = torch.float32,
              sizes: tuple[int, ...] | None = None) -> tuple[float, int]:
    """This machine's multiply-accumulate rate on a large ``dtype`` matmul (n^3 MACs; the fastest of
    ``sizes``, default 1024 and 2048 on a CPU, 4096 and 8192 on a GPU; median of 5), the roof the training
    steps are read against; returns (MAC/s, n)."""
    best = (0.0, 0)
    for n in sizes or ((1024, 2048) if device.type == "cpu" else (4096, 8192)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b
        runs = []
        for _ in range(5):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t)
        best = max(best, (n**3 / statistics.median(runs), n))
    return best
