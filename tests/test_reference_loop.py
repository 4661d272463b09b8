"""``train.fit`` of the plain method is the textbook supervised loop, written out here by hand.

The loop behind ``docs/RESULTS.md`` (issue 16: "if plain ResNet-20 misses its bar, something in the
loop is wrong: find it"). The reference below uses only torch: SGD with momentum 0.9, Nesterov and
weight decay on every parameter; per-step linear warm-up over the first epoch, then the cosine
``0.5 (1 + cos(pi t / T))`` (Loshchilov & Hutter 2017, Eq. 5 without restarts, ``t`` counted from the
end of the warm-up); ``model.train()`` for every step; cross-entropy on the full-depth network. Same
seed, same initial weights, same batches: the trained weights and BN statistics must agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gatesearch.checkpoint import build_model
from gatesearch.config import from_flat
from gatesearch.data import build_data
from gatesearch.train import fit, seed_everything

FLAT = {
    "model.name": "resnet20", "model.gating": "stage", "data.name": "synthetic", "data.synthetic_size": 192,
    "data.batch_size": 32, "data.val_fraction": 0.0, "optim.name": "sgd", "optim.lr": 0.1, "optim.momentum": 0.9,
    "optim.schedule": "cosine", "optim.warmup_epochs": 1, "optim.weight_decay": 5e-4, "train.seed": 3,
    "train.epochs": 3, "train.eval_every": 100, "train.channels_last": False, "method.name": "plain",
    "train.device": "cpu",
}


def reference_lrs(base: float, steps: int, epochs: int, warmup_epochs: int) -> list[float]:
    warm, total = steps * warmup_epochs, steps * epochs
    out = []
    for s in range(total):
        if s < warm:
            out.append(base * (s + 1) / warm)
        else:
            out.append(base * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    return out


def test_fit_matches_a_hand_written_sgd_loop(tmp_path):
    cfg = from_flat({**FLAT, "train.out_dir": str(tmp_path / "fit")})
    result = fit(cfg)

    seed_everything(3)
    data = build_data(cfg.data, 3)
    model = build_model(cfg, data.num_classes, data.input_shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = len(data.train)  # 192 / 32 = 6, drop_last
    assert steps == 6
    lrs = reference_lrs(0.1, steps, 3, 1)
    assert abs(lrs[0] - 0.1 / 6) < 1e-12 and abs(lrs[5] - 0.1) < 1e-12  # warm-up ends at the base lr
    step = 0
    losses = []
    for _ in range(3):
        model.train()
        for x, y in data.train:
            for g in opt.param_groups:
                g["lr"] = lrs[step]
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
    assert step == 18

    got, ref = result.model.state_dict(), model.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert abs(result.history[-1]["lr"] - lrs[-1]) < 1e-12
    assert abs(result.history[-1]["train_loss"] - sum(losses[-6:]) / 6) < 1e-5
