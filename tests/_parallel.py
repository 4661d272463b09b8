"""Run a job in W gloo ranks (``torch.multiprocessing.spawn``) and collect what each returned.

The data-parallel tests (``test_parallel.py``) run the same job once in one process (the reference:
no process group) and in 2 ranks, and compare. Each rank seeds its global RNG as ``train.fit`` does
(rank 0 with the seed, others with ``data.rank_seed``), so anything a rank drew on its own would show.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gatesearch.checkpoint import build_model
from gatesearch.config import Config, from_flat
from gatesearch.data import build_data, rank_seed, shard_bundle
from gatesearch.methods import METHODS
from gatesearch.models.norm import convert_sync_bn
from gatesearch.parallel import rank_world
from gatesearch.resolve import check_names
from gatesearch.train import Trainer, build_optimizer

BASE: dict[str, Any] = {
    "model.name": "resnet20", "data.name": "digits", "data.batch_size": 16, "data.eval_batch_size": 64,
    "data.augment": False, "train.device": "cpu", "train.epochs": 1, "optim.lr": 0.1, "model.sync_bn": True,
}
BLOCK = {"model.gating": "block", "model.switchable_bn": False}  # the AIG layout (002 Sec. 4)

#: name -> (flat config, the step to take: gated_depth's k-th step, k = 10, is its distillation step)
VARIANTS: dict[str, tuple[dict[str, Any], int]] = {
    "plain": ({"method.name": "plain"}, 0),
    "stochastic_depth": ({"method.name": "stochastic_depth"}, 0),
    "adn": ({"method.name": "adn"}, 0),
    "adn_two_backward": ({"method.name": "adn", "method.adn.two_backward": True}, 0),
    "gated_depth": ({"method.name": "gated_depth"}, 0),
    "gated_depth_distill": ({"method.name": "gated_depth"}, 9),
    # the teacher pass under no_grad: the stem runs outside DDP's forward, the student pass inside
    "gated_depth_distill_no_teacher_grad": ({"method.name": "gated_depth", "method.gated_depth.teacher_grad": False}, 9),
    "probgates_per_gate": ({"method.name": "probgates", "model.gate_head": "logit", "method.probgates.loss": "per_gate",
                            **BLOCK}, 0),
    "probgates_per_batch": ({"method.name": "probgates", "model.gate_head": "logit",
                             "method.probgates.loss": "per_batch", **BLOCK}, 0),
    "probgates_aig_per_batch": ({"method.name": "probgates", "model.gate_head": "aig",
                                 "method.probgates.loss": "per_batch", **BLOCK}, 0),
}


def config(**flat: Any) -> Config:
    return check_names(from_flat({**BASE, **{k.replace("__", "."): v for k, v in flat.items()}}))


def build(cfg: Config) -> tuple[Any, Trainer]:
    """The rank's data (its shard; the whole data in one process) and a Trainer as ``fit`` builds it,
    the weights from seed 0 on every rank."""
    data = shard_bundle(build_data(cfg.data, cfg.train.seed), cfg.data.batch_size, cfg.train.seed)
    torch.manual_seed(0)
    model = build_model(cfg, data.num_classes, data.input_shape)
    if cfg.model.sync_bn and rank_world()[1] > 1:
        convert_sync_bn(model)
    steps = len(data.train)
    method = METHODS.get(cfg.method.name)(cfg, model, steps)
    optimizer = build_optimizer(cfg.optim, method.param_groups(model), model)
    return data, Trainer(cfg, model, method, optimizer, torch.device("cpu"), steps)


def seed_rank(seed: int) -> None:
    torch.manual_seed(rank_seed(seed, rank_world()[0]))


def _entry(rank: int, world: int, init: str, job: Callable[..., Any], args: tuple, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(job(*args), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(job: Callable[..., Any], *args: Any, world: int = 2) -> list[Any]:
    """``job(*args)`` in ``world`` gloo ranks; what each returned, by rank (``job`` at module level)."""
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "rendezvous")
        mp.spawn(_entry, args=(world, init, job, args, tmp), nprocs=world, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)]
