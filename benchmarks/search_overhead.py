"""Orchestration + tracking overhead of a search: study wall time vs the trials' own training time.

A fixed small study (synthetic 3x32x32 images, ResNet-20, ADN, lr searched) runs its trials one at a time on a local
Ray with MLflow in a fresh SQLite file, so the study's wall time is the trials' time plus what the
search adds: Ray start, worker start, Optuna, Tune bookkeeping, per-epoch checkpoints, MLflow.

    python benchmarks/search_overhead.py                # 3 trials x 6 epochs x 40 steps, ~40 s of training each
    python benchmarks/search_overhead.py --epochs 2     # a shorter run

Overhead is reported against the sum of ``train_time_s`` (training steps only) and against the sum
of ``epoch_time_s`` (training + per-epoch evaluation of every sub-network, part of a trial's job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml


def study(trials: int, epochs: int, steps: int, images: int) -> dict:
    return {
        "study": {"name": "overhead", "objective": {"metric": "top1_super", "mode": "max"},
                  "budget": {"trials": trials, "epochs": epochs}, "max_concurrent_trials": 1,
                  "resources": {"cpu": os.cpu_count() or 1}, "asha": {"grace_period": epochs}},
        # CIFAR-sized synthetic images (no download): epochs of a few seconds, like real ones, not
        # digits' sub-second epochs where per-epoch bookkeeping would be most of the trial
        "fixed": {"data.name": "synthetic", "data.synthetic_size": images, "data.batch_size": 64,
                  "data.augment": False, "model.name": "resnet20", "method.name": "adn", "train.device": "cpu",
                  "train.max_steps_per_epoch": steps, "train.log_every": 100000, "tracking.experiment": "overhead"},
        "search": {"optim.lr": {"loguniform": [0.02, 0.2]}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40, help="training steps per epoch (batch 64, 3x32x32)")
    ap.add_argument("--images", type=int, default=3200, help="synthetic images per split (train is 90%%)")
    args = ap.parse_args()
    import torch

    from gatesearch.search.runner import SearchOptions, run_search

    with tempfile.TemporaryDirectory(prefix="gs-overhead-") as tmp:
        space = Path(tmp) / "overhead.yaml"
        space.write_text(yaml.safe_dump(study(args.trials, args.epochs, args.steps, args.images)))
        t0 = time.perf_counter()
        summary = run_search(SearchOptions(space=str(space), tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                           storage=f"{tmp}/rr", verbose=0))
        total = time.perf_counter() - t0
        train, epoch = 0.0, 0.0
        for t in summary["trials"]:
            progress = Path(summary["storage"]).glob(f"*_{t['trial_id']}/result.json")
            rows = [json.loads(line) for p in progress for line in p.read_text().splitlines() if line.strip()]
            train += max(r["train_time_s"] for r in rows)
            epoch += sum(r["epoch_time_s"] for r in rows)
    n = len(summary["trials"])
    print(f"search overhead: torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()} (driver), python {platform.python_version()}, "
          f"{n} trials x {args.epochs} epochs x {args.steps} steps, one trial at a time")
    print(f"{'quantity':<44}{'seconds':>10}{'per trial':>11}")
    for name, v in [("study wall time (run_search, Ray start incl.)", total),
                    ("Tuner.fit wall time", summary["wall_time_s"]),
                    ("sum of trials' train_time_s", train), ("sum of trials' epoch_time_s (train + eval)", epoch)]:
        print(f"{name:<44}{v:10.1f}{v / n:11.1f}")
    fit_wall = summary["wall_time_s"]
    print(f"wall / sum(train_time_s) - 1:  {total / train - 1:6.1%}   (Tuner.fit only: {fit_wall / train - 1:6.1%})"
          "   <- counts each epoch's evaluation of every sub-network as overhead")
    print(f"wall / sum(epoch_time_s) - 1:  {total / epoch - 1:6.1%}   (Tuner.fit only: {fit_wall / epoch - 1:6.1%})")
    # what the search adds: wall time outside every trial's epochs (Ray and worker start, model/data
    # setup per trial, Optuna, Tune bookkeeping, checkpoints, MLflow), relative to the training time
    print(f"orchestration + tracking = (wall - sum(epoch_time_s)) / sum(train_time_s): {(total - epoch) / train:6.1%}"
          f"   (Tuner.fit only: {(fit_wall - epoch) / train:6.1%})")


if __name__ == "__main__":
    main()
