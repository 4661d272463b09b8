"""Train plain (full and base depth), adn, gated_depth and probgates on CIFAR-10 from an npz
directory with one budget, then print top-1 on the test set for the super / mid / base patterns
and each pattern's MACs.

    python benchmarks/reproduce_cifar.py --data-root /path/to/cifar10 [--epochs 2] [--train-subset 5000]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Subset

from gatesearch.config import Config, from_flat
from gatesearch.cost import count_macs
from gatesearch.data import build_data
from gatesearch.evaluate import evaluate
from gatesearch.methods.probgates import strategy_gates
from gatesearch.patterns import SkipPattern
from gatesearch.train import fit

RUNS: dict[str, dict] = {
    "plain (full depth)": {"method.name": "plain"},
    "plain (base depth)": {"method.name": "plain", "method.plain.train_pattern": "TTT"},
    "adn": {"method.name": "adn"},
    "gated_depth": {"method.name": "gated_depth"},
    "probgates (logit)": {"method.name": "probgates", "model.gate_head": "logit"},
}


def ladder(n: int) -> list[SkipPattern]:
    """Super, then units skipped from the last one backwards, down to the base: FFF, FFT, FTT, TTT."""
    return [SkipPattern(tuple(i >= n - k for i in range(n))) for k in range(n + 1)]


def _test_loader(cfg: Config, limit: int) -> DataLoader:
    """The test split, or a seeded random ``limit`` of it (the npz files are class-major)."""
    test = build_data(cfg.data, cfg.train.seed).test
    if not limit or limit >= len(test.dataset):
        return test
    idx = torch.randperm(len(test.dataset), generator=torch.Generator().manual_seed(0))[:limit].tolist()
    return DataLoader(Subset(test.dataset, idx), batch_size=test.batch_size, collate_fn=test.collate_fn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--val-fraction", type=float, default=0.02, help="of the 50k train images (0.02: 1000)")
    p.add_argument("--test-limit", type=int, default=2000, help="score on this many random test images (0: all)")
    p.add_argument("--out-dir", default="outputs/reproduce_cifar")
    p.add_argument("--only", nargs="*", help="run only these rows")
    args = p.parse_args()
    common = {"model.name": args.model, "data.name": "cifar10", "data.root": args.data_root,
              "data.train_subset": args.train_subset, "data.batch_size": args.batch, "optim.lr": args.lr,
              "train.epochs": args.epochs, "train.eval_every": args.epochs, "data.val_fraction": args.val_fraction}
    print(f"torch {torch.__version__}  threads {torch.get_num_threads()}  model {args.model}  epochs {args.epochs}  "
          f"train_subset {args.train_subset}  batch {args.batch}  lr {args.lr}  test images {args.test_limit or 'all'}  "
          f"data {args.data_root}")
    rows, macs, patterns = [], {}, []
    for name, extra in RUNS.items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        cfg = from_flat({**common, **extra, "train.out_dir": f"{args.out_dir}/{name.split(' ')[0]}_{len(rows)}"})
        res = fit(cfg)
        test = _test_loader(cfg, args.test_limit)
        patterns = ladder(res.model.n_units)
        dev = next(res.model.parameters()).device
        accs = [evaluate(res.model, test, res.method.eval_gates(res.model, q), dev).top1 for q in patterns]
        learned = ""
        if cfg.method.name == "probgates":
            g = strategy_gates(res.model, "threshold", cfg.method.probgates.threshold)
            learned = f"{evaluate(res.model, test, g, dev).top1:.4f} @ {g}"
        macs = {str(q): count_macs(res.model, q, (1, 3, 32, 32)) for q in patterns}
        rows.append((name, accs, learned, time.perf_counter() - t))
    header = " | ".join(f"{q} top-1" for q in patterns)
    print(f"\n| run | {header} | learned gates (threshold) | time (s) |")
    print("|---" * (len(patterns) + 3) + "|")
    for name, accs, learned, secs in rows:
        print(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) + f" | {learned or '-'} | {secs:.0f} |")
    print("| MMACs | " + " | ".join(f"{macs[str(q)] / 1e6:.2f}" for q in patterns) + " | | |")


if __name__ == "__main__":
    main()
