"""Small, fast configs for training tests (digits, resnet20, 250 steps on CPU)."""

from __future__ import annotations

from typing import Any

from gatesearch.config import Config, from_flat
from gatesearch.resolve import check_names

QUICK: dict[str, Any] = {
    "model.name": "resnet20",
    "data.name": "digits",
    "data.batch_size": 32,
    "optim.lr": 0.1,
    "train.epochs": 5,
    "train.max_steps_per_epoch": 50,
    "train.eval_every": 5,
    "train.device": "cpu",
}


def quick_cfg(out_dir: str, method: str = "plain", **flat: Any) -> Config:
    extra = {"model.gate_head": "logit"} if method == "probgates" else {}
    return check_names(from_flat({**QUICK, **extra, "method.name": method, "train.out_dir": out_dir,
                                  **{k.replace("__", "."): v for k, v in flat.items()}}))


def one_thread():
    """Generator for an autouse fixture: tiny 8x8 convs run faster on one thread (and leave the
    second core to whatever else runs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
