"""Step time of each training method relative to ``plain`` on the same model and batch.

One process, methods interleaved round by round (so background load hits all of them alike);
each round times ``steps`` optimizer steps (a multiple of gated_depth's k, so its distillation
steps are averaged in); the fastest round of each method is reported (on a shared machine the
minimum is the estimate least inflated by other processes). Prints the setup and a table of
ms/step and the ratio to plain.

    python benchmarks/train_step.py [--model resnet20] [--batch 64] [--rounds 5] [--steps 8] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gatesearch.checkpoint import build_model
from gatesearch.config import Config, from_flat
from gatesearch.methods import METHODS
from gatesearch.train import Trainer, build_optimizer, resolve_device

VARIANTS: dict[str, dict] = {
    "plain": {},
    "stochastic_depth": {},
    "adn": {},
    "adn (two_backward)": {"method.adn.two_backward": True},
    "adn (output KL only)": {"method.adn.feature_kl": False},
    "gated_depth": {"method.gated_depth.k": 4},
    "probgates (logit)": {"model.gate_head": "logit"},
    "probgates (aig, block)": {"model.gate_head": "aig", "model.gating": "block"},
}


def _setup(name: str, extra: dict, args: argparse.Namespace, device: torch.device) -> Trainer:
    method = name.split(" ")[0]
    cfg: Config = from_flat({"model.name": args.model, "method.name": method, "train.epochs": 1000,
                             "train.device": str(device), **extra})
    torch.manual_seed(0)
    model = build_model(cfg, 10, (3, 32, 32)).to(device)
    m = METHODS.get(method)(cfg, model, steps_per_epoch=1000)
    trainer = Trainer(cfg, model, m, build_optimizer(cfg.optim, m.param_groups(model)), device, steps=1000)
    if trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    return trainer


def _time(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int, start: int) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for s in range(start, start + steps):
        trainer.step(x, y, s, 0)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="steps per round (multiple of 4 = gated_depth's k)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--only", nargs="*", help="variants to run (plain always runs)")
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in VARIANTS if n == "plain" or not args.only or n in args.only]
    trainers = {n: _setup(n, VARIANTS[n], args, device) for n in names}
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    for tr in trainers.values():  # warm-up (and cuDNN autotune)
        _time(tr, x, y, 4, 0)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n, tr in trainers.items():
            times[n].append(_time(tr, x, y, args.steps, 4 + r * args.steps))
    print(f"torch {torch.__version__}  threads {torch.get_num_threads()}  device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}  model {args.model}  "
          f"batch {args.batch}x3x32x32  rounds {args.rounds} x {args.steps} steps  (fastest round)")
    base = min(times["plain"])
    print(f"{'method':<24} {'ms/step':>9} {'ratio to plain':>15} {'(median ratio)':>16}")
    for n in names:
        best, med = min(times[n]), statistics.median(times[n])
        print(f"{n:<24} {best * 1e3:9.1f} {best / base:15.2f} {med / statistics.median(times['plain']):16.2f}")


if __name__ == "__main__":
    main()
