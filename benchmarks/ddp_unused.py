"""DDP with skipped units (issue #25 item 3, docs/DESIGN_NOTES.md item 46): what
``find_unused_parameters=True`` costs a Gated Depth step against the alternative that lets DDP skip the
graph traversal, every parameter in every step's graph (``loss + 0 * sum(p)``, find_unused off).

    python benchmarks/ddp_unused.py [--steps 30] [--batch 64] [--world 2]

Both run in the same ``world`` gloo ranks on the CPU, interleaved in rounds (so load drifts hit both),
ResNet-20 (stage gating, switchable BN) on 3x32x32 inputs, ``gated_depth`` (one pattern per step,
broadcast; its every k-th step the two-pass distillation). A static graph (``static_graph=True``) is
not a candidate: the set of used parameters changes with the pattern (2^3 of them), which a static
graph forbids. The zero-sum variant also changes what the optimiser does: a skipped unit gets a zero
gradient instead of none, so SGD's weight decay and momentum move it (one process leaves it alone).
Prints one table: median ms per step of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from gatesearch.checkpoint import build_model
from gatesearch.config import from_flat
from gatesearch.methods import METHODS
from gatesearch.train import DistributedModel, _Calls, build_optimizer

MODES = ("find_unused", "zero_sum")


class _ZeroSumModel(DistributedModel):
    """``DistributedModel`` with ``find_unused_parameters=False``; the step adds ``0 * sum(p)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.ddp = DistributedDataParallel(_Calls(model), find_unused_parameters=False)


def _step(mode: str, sm: DistributedModel, method, opt, x, y, step: int) -> None:
    opt.zero_grad(set_to_none=True)
    res = method.train_step(sm, x, y, step, 0, lambda t: t.backward())
    loss = res.loss
    if mode == "zero_sum":
        loss = loss + 0.0 * sum(p.sum() for p in sm.model.parameters())
    loss.backward()
    opt.step()


def _rank(rank: int, world: int, init: str, steps: int, batch: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    cfg = from_flat({"model.name": "resnet20", "method.name": "gated_depth", "train.epochs": 1})
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(rank))
    runs = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = build_model(cfg, 10, (3, 32, 32))
        method = METHODS.get("gated_depth")(cfg, model, steps)
        opt = build_optimizer(cfg.optim, method.param_groups(model), model)
        sm = DistributedModel(model, torch.device("cpu")) if mode == "find_unused" else _ZeroSumModel(model)
        runs[mode] = (sm, method, opt)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for s in range(steps + 3):
        for mode in MODES:  # interleaved: the same pattern stream (each broadcast from rank 0) per mode
            torch.manual_seed(s)
            dist.barrier()
            t = time.perf_counter()
            _step(mode, *runs[mode], x, y, s)
            dist.barrier()
            if s >= 3:  # warm-up
                times[mode].append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(json.dumps({m: statistics.median(v) for m, v in times.items()}))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64, help="per rank")
    p.add_argument("--world", type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times")
        mp.spawn(_rank, args=(a.world, os.path.join(tmp, "init"), a.steps, a.batch, out), nprocs=a.world, join=True)
        med = json.loads(Path(out).read_text())
    print(f"torch {torch.__version__}, {a.world} gloo ranks on CPU, 1 thread each, ResNet-20 gated_depth, "
          f"batch {a.batch}/rank, 3x32x32, {a.steps} steps (median)", file=sys.stdout)
    print("| DDP setup | ms / step | ratio |\n| --- | --- | --- |")
    for m in MODES:
        print(f"| {m} | {1e3 * med[m]:.1f} | {med[m] / med['find_unused']:.3f} |")


if __name__ == "__main__":
    main()
