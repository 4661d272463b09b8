"""The device check to run whenever a GPU is lent (issue #25 item 5): one command, at most ~5 minutes on one
GPU, one JSON. On the CPU it runs with ``--smoke`` (tiny sizes) in the test suite, so it is known to work
before a GPU session spends its minutes on it.

    python benchmarks/gpu_check.py --data-root ../shared/data/cifar10 --out docs/results/gpu_check.json
    python benchmarks/gpu_check.py --render docs/results/gpu_check.json       # its section of docs/RESULTS.md
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json          # CPU, seconds

It measures, each in this one process run (the DDP step in two child processes):
- ``throughput``: training images/s of every method (ResNet-20, CIFAR-10-sized inputs, batch 128 and 512;
  data on the device; bf16 autocast on CUDA; ``train.compile`` off and ``inductor``), with the achieved MAC
  rate next to ``peak_macs_per_s``, the device's own matmul rate (fp32, and bf16 on CUDA) measured in the run;
- ``cifar_run``: plain ResNet-20 trained to ``--epochs`` (30) on the full CIFAR-10 npz directory: wall time
  and test top-1 (needs ``--data-root``; skipped without it);
- ``concurrency``: total training images/s of 1 against 4 concurrent trials (processes) on the one device;
- ``resnet50_latency``: base-net / super-net latency of ResNet-50 at batch 64 (224 px) against its MAC ratio;
- ``ddp``: one 2-worker DistributedDataParallel step (nccl on CUDA, gloo on CPU): time, and whether both
  ranks end with the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _mac_rate import peak_macs, step_macs
from render_results import write_section

from gatesearch.checkpoint import build_model
from gatesearch.config import from_flat
from gatesearch.cost import count_macs
from gatesearch.methods import METHODS
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern
from gatesearch.train import Trainer, autocast_dtype, build_optimizer, fit, resolve_device

METHODS_CHECKED = ("plain", "stochastic_depth", "adn", "gated_depth", "probgates")


def _trainer(method: str, device: torch.device, compile_backend: str, resolution: int) -> Trainer:
    extra = {"model.gate_head": "logit"} if method == "probgates" else {}
    cfg = from_flat({"model.name": "resnet20", "method.name": method, "train.epochs": 1000, "train.device": str(device),
                     "train.compile": compile_backend, **extra})
    torch.manual_seed(0)
    model = build_model(cfg, 10, (3, resolution, resolution)).to(device)
    m = METHODS.get(method)(cfg, model, steps_per_epoch=1000)
    return Trainer(cfg, model, m, build_optimizer(cfg.optim, m.param_groups(model)), device, steps=1000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peaks(device: torch.device, smoke: bool) -> dict[str, float]:
    """The device's matmul MAC/s in fp32 and, on CUDA, in the training steps' autocast dtype (bf16): the
    roofs ``throughput`` reads its rates against."""
    sizes = (256, 512) if smoke else None
    out = {"fp32": peak_macs(device, torch.float32, sizes)[0]}
    amp = autocast_dtype(device, True)
    if amp is not None:
        out[str(amp).removeprefix("torch.")] = peak_macs(device, amp, sizes)[0]
    return out


def throughput(device: torch.device, batches: list[int], steps: int, resolution: int, compiles: list[str],
               peak: dict[str, float], mac_steps: int) -> list[dict]:
    """Training images/s per (method, batch, compile): ``steps`` timed steps after as many warm-up steps
    (compilation and cuDNN autotuning happen in the warm-up), on a batch resident on the device; and the
    achieved MAC rate (a step's MACs, counted eagerly over ``mac_steps`` steps: gated_depth's k = 10 holds
    one distillation step, over the timed step time) as a share of ``peak`` in the steps' dtype."""
    rows = []
    amp = autocast_dtype(device, True)
    roof = peak[str(amp).removeprefix("torch.")] if amp is not None else peak["fp32"]
    macs: dict[tuple[str, int], float] = {}
    for method in METHODS_CHECKED:
        for batch in batches:
            tr = _trainer(method, device, "off", resolution)
            macs[method, batch] = step_macs(tr, *_batch(batch, resolution, device), mac_steps)
    for compile_backend in compiles:
        for method in METHODS_CHECKED:
            for batch in batches:
                tr = _trainer(method, device, compile_backend, resolution)
                x, y = _batch(batch, resolution, device)
                for s in range(steps):  # warm-up
                    tr.step(x, y, s, 0)
                _sync(device)
                t = time.perf_counter()
                for s in range(steps, 2 * steps):
                    tr.step(x, y, s, 0)
                _sync(device)
                step_s = (time.perf_counter() - t) / steps
                rows.append({"method": method, "batch": batch, "compile": compile_backend,
                             "images_per_s": batch / step_s, "gmacs_per_s": macs[method, batch] / step_s / 1e9,
                             "of_peak": macs[method, batch] / step_s / roof})
    return rows


def _batch(batch: int, resolution: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(batch, 3, resolution, resolution, device=device),
            torch.randint(0, 10, (batch,), device=device))


def cifar_run(data_root: str, epochs: int, device: torch.device, out_dir: Path) -> dict:
    """Plain ResNet-20 on the full CIFAR-10 npz directory: wall time to ``epochs`` and test top-1 (super-net)."""
    cfg = from_flat({"model.name": "resnet20", "method.name": "plain", "data.name": "cifar10", "data.source": "npz",
                     "data.root": data_root, "train.epochs": epochs, "train.device": str(device),
                     "train.out_dir": str(out_dir), "train.eval_every": epochs, "train.final_test": True,
                     "optim.schedule": "cosine", "optim.warmup_epochs": 1, "optim.weight_decay": 5e-4})
    t = time.perf_counter()
    result = fit(cfg)
    return {"epochs": epochs, "wall_s": time.perf_counter() - t, "test_top1_super": result.metrics.get("test_top1_FFF"),
            "val_top1_super": result.metrics.get("top1_super")}


def _worker_rate(device: str, batch: int, steps: int, resolution: int) -> float:
    """One trial's training images/s (run in a child process by ``concurrency``)."""
    tr = _trainer("plain", torch.device(device), "off", resolution)
    x, y = _batch(batch, resolution, torch.device(device))
    for s in range(steps):
        tr.step(x, y, s, 0)
    _sync(torch.device(device))
    t = time.perf_counter()
    for s in range(steps, 2 * steps):
        tr.step(x, y, s, 0)
    _sync(torch.device(device))
    return batch * steps / (time.perf_counter() - t)


def concurrency(device: torch.device, batch: int, steps: int, resolution: int, counts: tuple[int, ...]) -> list[dict]:
    """Total images/s of ``n`` trials training at once on the one device (``n`` processes)."""
    rows = []
    for n in counts:
        cmd = [sys.executable, __file__, "--_worker", str(device), str(batch), str(steps), str(resolution)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        rates = [float(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
        rows.append({"trials": n, "total_images_per_s": sum(rates), "per_trial": rates})
    return rows


def resnet50_latency(device: torch.device, batch: int, resolution: int, runs: int) -> dict:
    """Base-net and super-net inference latency of ResNet-50 (stage gating) against their MAC ratio."""
    model = create_model("resnet50", 1000, stem="imagenet").to(device).eval()
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    base = SkipPattern.base_net(model.n_units)
    times: dict[str, list[float]] = {"super": [], "base": []}
    with torch.no_grad():
        for _ in range(2):
            model(x, None), model(x, base)
        for _ in range(runs):
            for name, gates in (("super", None), ("base", base)):
                _sync(device)
                t = time.perf_counter()
                model(x, gates)
                _sync(device)
                times[name].append(time.perf_counter() - t)
    shape = (1, 3, resolution, resolution)
    mac_ratio = count_macs(model, base, shape) / count_macs(model, None, shape)
    sup, bas = statistics.median(times["super"]), statistics.median(times["base"])
    return {"batch": batch, "resolution": resolution, "super_ms": 1e3 * sup, "base_ms": 1e3 * bas,
            "latency_ratio": bas / sup, "mac_ratio": mac_ratio}


def _ddp_rank(rank: int, world: int, port: int, device_type: str, out: str) -> None:
    """One rank of ``ddp``: a DDP step of plain ResNet-20 on its half of a fixed global batch."""
    import torch.distributed as dist  # lazy: only the DDP child processes use it

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
    torch.manual_seed(0)
    model = create_model("resnet20", 10).to(device)
    # a switchable-BN stage's "unit skipped" set gets no gradient on a full-depth pass: without
    # find_unused_parameters the buckets holding it never all-reduce and the ranks drift apart (seen here)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device_type == "cuda" else None,
                                                    find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8 * world, 3, 32, 32, generator=g), torch.randint(0, 10, (8 * world,), generator=g)
    shard = slice(8 * rank, 8 * (rank + 1))
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(ddp(x[shard].to(device)), y[shard].to(device))
    loss.backward()
    opt.step()
    elapsed = time.perf_counter() - t
    flat = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    Path(out, f"rank{rank}.json").write_text(json.dumps({"step_s": elapsed, "checksum": float(flat.double().sum())}))
    dist.destroy_process_group()


def ddp(device: torch.device, work: Path) -> dict:
    """A 2-worker DDP step: both ranks must end with the same weights (gradients all-reduced)."""
    import torch.multiprocessing as mp  # lazy: only this check spawns processes

    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): nccl needs one per rank"}
    work.mkdir(parents=True, exist_ok=True)
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_rank, args=(2, port, device.type, str(work)), nprocs=2, join=True)
    ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]
    return {"workers": 2, "backend": "nccl" if device.type == "cuda" else "gloo",
            "step_s": max(r["step_s"] for r in ranks), "same_weights": ranks[0]["checksum"] == ranks[1]["checksum"]}


def render(record: dict[str, Any], source: str) -> list[str]:
    """The markdown section of ``docs/RESULTS.md`` for one ``gpu_check`` JSON: every number read from it."""
    peak = record["peak_macs_per_s"]
    lines = [f"Rendered by `python benchmarks/gpu_check.py --render {source}` (torch {record['torch']}, "
             f"{record['device_name']}{', smoke sizes' if record['smoke'] else ''}; the whole check took "
             f"{record['wall_s']:.0f} s). Matmul peak measured in the run: "
             + ", ".join(f"{k} {v / 1e12:.2f} TMAC/s" for k, v in peak.items()) + ".", "",
             "| method | batch | compile | images/s | GMAC/s | of peak |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['batch']} | {r['compile']} | {r['images_per_s']:.0f} | {r['gmacs_per_s']:.1f} | "
              f"{r['of_peak']:.1%} |" for r in record["throughput"]]
    conc = record["concurrency"]
    lines += ["", "Concurrent trials on the one device (plain ResNet-20): "
              + "; ".join(f"{c['trials']} trial(s) {c['total_images_per_s']:.0f} images/s in all" for c in conc)
              + f" ({conc[-1]['total_images_per_s'] / conc[0]['total_images_per_s']:.2f}x one trial)."]
    lat = record["resnet50_latency"]
    lines += [f"ResNet-50 base-net / super-net latency at batch {lat['batch']}, {lat['resolution']} px: "
              f"{lat['base_ms']:.1f} / {lat['super_ms']:.1f} ms = {lat['latency_ratio']:.3f}, against a MAC ratio "
              f"of {lat['mac_ratio']:.3f}."]
    d = record["ddp"]
    lines.append(f"DDP: {d['skipped']}." if "skipped" in d else
                 f"DDP, {d['workers']} workers ({d['backend']}): one step {d['step_s'] * 1e3:.0f} ms, same weights "
                 f"on both ranks: {d['same_weights']}.")
    run = record["cifar_run"]
    lines.append(f"Plain ResNet-20, full CIFAR-10: {run['skipped']}." if "skipped" in run else
                 f"Plain ResNet-20 to {run['epochs']} epochs on the full CIFAR-10: {run['wall_s']:.0f} s, test "
                 f"top-1 {100 * run['test_top1_super']:.2f} %.")
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":  # a child of ``concurrency``
        device, batch, steps, resolution = sys.argv[2], *map(int, sys.argv[3:6])
        print(_worker_rate(device, batch, steps, resolution))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="the JSON to write (required unless --render)")
    p.add_argument("--render", metavar="JSON", help="write a check's JSON as its section of --doc instead of running")
    p.add_argument("--doc", default=str(Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"))
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None, help="CIFAR-10 npz directory for the 30-epoch run (skipped without)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: seconds on a CPU (the test suite)")
    args = p.parse_args()
    if args.render:
        print(write_section(Path(args.doc), "<!-- results:gpu_check:begin -->", "<!-- results:gpu_check:end -->",
                            render(json.loads(Path(args.render).read_text()), args.render)))
        return
    if not args.out:
        p.error("--out is required")
    device = resolve_device(args.device)
    smoke = args.smoke
    out = Path(args.out)
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "torch": torch.__version__, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "smoke": smoke,
        "peak_macs_per_s": peaks(device, smoke),
    }
    record |= {
        "throughput": throughput(device, [8] if smoke else [128, 512], 2 if smoke else 20, 16 if smoke else 32,
                                 ["off"] if smoke else ["off", "inductor"], record["peak_macs_per_s"],
                                 2 if smoke else 10),
        "concurrency": concurrency(device, 8 if smoke else 128, 2 if smoke else 20, 16 if smoke else 32,
                                   (1, 2) if smoke else (1, 4)),
        "resnet50_latency": resnet50_latency(device, 2 if smoke else 64, 64 if smoke else 224, 2 if smoke else 10),
        "ddp": ddp(device, out.parent / f".{out.stem}-ddp"),
    }
    record["cifar_run"] = (cifar_run(args.data_root, 1 if smoke else args.epochs, device, out.parent / f".{out.stem}-run")
                           if args.data_root else {"skipped": "no --data-root"})
    record["wall_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("device_name", "wall_s")}), f"-> {out}")


if __name__ == "__main__":
    main()
