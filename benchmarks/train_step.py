"""Step time of each training method relative to ``plain`` on the same model and batch.

One process, methods interleaved round by round; each round times ``steps`` optimizer steps of
every method (a multiple of gated_depth's k, so its distillation steps are averaged in) and of
``plain`` before and after them. A method's ratio in a round is its time over the mean of that
round's two plain timings, so load that drifts between rounds cancels; the table prints the
median ratio over rounds with its interquartile range, the fastest round's ms/step, and the
issue's target for each method (adn <= 1.7, gated_depth <= 1.15, probgates <= 1.2), and the achieved
multiply-accumulate rate of each method's step (its MACs, forward and backward, counted by torch's flop
counter, over its fastest round's time) next to the machine's own peak measured in the same run (a large
fp32 matmul), so a reader sees how far from the roof each method runs.

    python benchmarks/train_step.py [--model resnet20] [--stem cifar] [--resolution 32] [--batch 64] [--rounds 9]
                                    [--steps 8] [--device auto] [--only VARIANT ...] [--keep-freed-memory on|off]
                                    [--flush-denormal on|off]

The header prints the base-net's share of the super-net's MACs for the model and input: adn's
target assumes ~63% (ADN's ResNet-50: 2.56 / 4.09 G); resnet20's is 65%, resnet56's 55%.
Every step trains on the same random batch, and as the steps go on subnormal floats appear
(in the gradients, among others), which x86 CPUs compute many times slower: plain resnet50 at
224 px slowed from ~0.95 to ~1.26 s/step within 15 steps, and adn, which trains slower, did
not. ``--flush-denormal on`` (the default) flushes them to zero, so the times measure the
work, not the underflow; resnet20 at 32 px times the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _mac_rate import peak_macs, step_macs

from gatesearch.checkpoint import build_model
from gatesearch.config import Config, from_flat
from gatesearch.cost import count_macs
from gatesearch.methods import METHODS
from gatesearch.patterns import SkipPattern
from gatesearch.train import Trainer, build_optimizer, resolve_device

#: Step-time targets relative to plain (the training issue); ``adn``'s assumes a base-net of ~63% of the MACs.
TARGETS = {"adn": 1.7, "gated_depth": 1.15, "probgates": 1.2}

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
    cfg: Config = from_flat({"model.name": args.model, "model.stem": args.stem, "method.name": method, "train.epochs": 1000,
                             "train.device": str(device), "train.keep_freed_memory": args.keep_freed_memory == "on",
                             **extra})
    torch.manual_seed(0)
    model = build_model(cfg, 10, (3, args.resolution, args.resolution)).to(device)
    m = METHODS.get(method)(cfg, model, steps_per_epoch=1000)
    trainer = Trainer(cfg, model, m, build_optimizer(cfg.optim, m.param_groups(model)), device, steps=1000)
    model.train()
    return trainer


def _base_net_mac_share(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """MACs of the base-net over the super-net's, for one input of ``shape`` (C, H, W)."""
    return count_macs(model, SkipPattern.base_net(model.n_units), (1, *shape)) / count_macs(model, None, (1, *shape))


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
    p.add_argument("--stem", choices=["cifar", "imagenet"], default="cifar")
    p.add_argument("--resolution", type=int, default=32, help="input height and width")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=8, help="steps per round (multiple of 4 = gated_depth's k)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--only", nargs="*", help="variants to run (plain always runs)")
    p.add_argument("--keep-freed-memory", choices=["on", "off"], default="on",
                   help="train.keep_freed_memory (CPU; process-wide, so compare two runs)")
    p.add_argument("--flush-denormal", choices=["on", "off"], default="on",
                   help="CPU: flush subnormal floats to zero (torch.set_flush_denormal; see the module docstring)")
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu" and args.flush_denormal == "on":
        torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in VARIANTS if n == "plain" or not args.only or n in args.only]
    trainers = {n: _setup(n, VARIANTS[n], args, device) for n in names}
    shape = (3, args.resolution, args.resolution)
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    for tr in trainers.values():  # warm-up (and cuDNN autotune)
        _time(tr, x, y, 4, 0)
    times: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        start = 4 + r * args.steps
        before = _time(trainers["plain"], x, y, args.steps, start)
        round_times = {n: _time(tr, x, y, args.steps, start) for n, tr in trainers.items() if n != "plain"}
        after = _time(trainers["plain"], x, y, args.steps, start)
        round_times["plain"] = (before + after) / 2
        for n, t in round_times.items():
            times[n].append(t)
            ratios[n].append(t / round_times["plain"])
    base_share = _base_net_mac_share(trainers["plain"].model, shape)  # plain trains the same stage-gated model
    macs = {n: step_macs(tr, x, y, args.steps) for n, tr in trainers.items()}  # after timing: not in the times
    peak, n_peak = peak_macs(device)
    print(f"torch {torch.__version__}  threads {torch.get_num_threads()}  device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}  model {args.model} "
          f"({args.stem} stem, base-net {base_share:.3f} of the MACs)  batch {args.batch}x{'x'.join(map(str, shape))}  "
          f"rounds {args.rounds} x {args.steps} steps  keep_freed_memory {args.keep_freed_memory}"
          f"  flush_denormal {args.flush_denormal}  peak {peak / 1e9:.1f} GMAC/s (fp32 matmul {n_peak}^3)")
    print(f"{'method':<24} {'ms/step':>8} {'GMAC/s':>8} {'of peak':>8} {'ratio to plain':>15} {'(IQR)':>13} {'target':>7}")
    for n in names:
        q1, med, q3 = statistics.quantiles(ratios[n], n=4, method="inclusive") if len(ratios[n]) > 1 else [ratios[n][0]] * 3
        target = TARGETS.get(n.split(" ")[0])
        verdict = "" if target is None else f"<= {target:<4} {'PASS' if med <= target else 'FAIL'}"
        rate = macs[n] / min(times[n])  # achieved: the step's MACs over its fastest round
        print(f"{n:<24} {min(times[n]) * 1e3:8.1f} {rate / 1e9:8.2f} {rate / peak:8.1%} {med:15.2f} "
              f"{f'({q1:.2f}-{q3:.2f})':>13} {verdict:>7}")


if __name__ == "__main__":
    main()
