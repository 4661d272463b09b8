"""``gatesearch`` command line: train | search | select | profile | export | devices | patterns.

Handlers only parse, call and print. A ``UserError`` (bad config, unknown device, missing
checkpoint, ...) becomes one line on stderr and exit code 2, never a traceback.

Each handler imports what it runs inside its own body (the only function-level imports of the package
besides optional heavy dependencies): start-up time, so ``gatesearch --help``, ``devices`` and a bad
argument answer without importing torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable, NoReturn

from gatesearch import preflight
from gatesearch.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line plus a hint, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nhint: {self.prog} --help\n")


def _number(kind: type, low: float, strict: bool) -> Callable[[str], int | float]:
    """An argparse ``type``: a finite ``kind`` (int or float) >= ``low`` (> ``low`` when ``strict``)."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # what argparse calls the type in its own messages
    return parse


positive_int, nonneg_int, positive_float = _number(int, 0, True), _number(int, 0, False), _number(float, 0, True)


def _cmd_patterns(args: argparse.Namespace) -> int:
    from gatesearch.config import ModelConfig
    from gatesearch.cost import count_macs, count_params
    from gatesearch.models import create_model
    from gatesearch.patterns import iter_patterns
    from gatesearch.resolve import model_facts

    stem = args.stem or ("imagenet" if args.image_size >= 64 else "cifar")
    try:
        model = create_model(args.model, args.num_classes, gating=args.gating, stem=stem)
    except (KeyError, ValueError) as e:
        raise UserError(str(e).strip("'\"")) from None
    shape = (1, 3, args.image_size, args.image_size)
    model_facts(ModelConfig(args.model, args.gating, stem), shape[1:], key="--image-size")  # fits, before counting
    full_macs = count_macs(model, None, shape)
    full_params = count_params(model, None, shape)
    print(f"{args.model}  gating={args.gating}  stem={stem}  units={model.n_units}  input={list(shape)}")
    print(f"{'pattern':<{max(8, model.n_units)}}  {'MMACs':>9}  {'MAC ratio':>9}  {'params (M)':>10}")
    for p in itertools.islice(iter_patterns(model.n_units), args.limit):  # lazily: block resnet56 has 2^27
        macs, params = count_macs(model, p, shape), count_params(model, p, shape)
        print(f"{str(p):<{max(8, model.n_units)}}  {macs / 1e6:9.2f}  {macs / full_macs:9.3f}  {params / 1e6:10.3f}")
    every = sum(p.numel() for p in model.parameters())  # with the unused switchable sets and gate heads
    print(f"(T = unit skipped; super-net params {full_params / 1e6:.3f} M, all parameters {every / 1e6:.3f} M)")
    return 0


def _add_patterns(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patterns", help="build a model and print MACs/params of every skip pattern")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.add_argument("--gating", default="stage", choices=["stage", "block", "none"])
    p.add_argument("--stem", default=None, choices=["cifar", "imagenet"],
                   help="default: imagenet for --image-size >= 64, else cifar")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--limit", type=nonneg_int, default=64, help="print at most this many patterns")
    p.set_defaults(func=_cmd_patterns)


def _cmd_search(args: argparse.Namespace) -> int:
    from gatesearch.search.runner import SearchOptions, describe, run_search

    summary = run_search(SearchOptions(space=args.space, address=args.address, tracking_uri=args.tracking_uri,
                                       resume=args.resume, overrides=tuple(args.set), storage=args.storage,
                                       num_cpus=args.num_cpus, select=not args.no_select))
    print(describe(summary))
    return 130 if summary["interrupted"] else 0 if summary["n_complete"] > 0 else 1


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a training recipe with Ray Tune + Optuna (MLflow-tracked)")
    p.add_argument("--space", required=True, help="search space file, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default: the space's tracking.uri, {DEFAULT_TRACKING_URI})")
    p.add_argument("--resume", action="store_true",
                   help="continue the study found in --storage (starts it when there is none yet)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key for every trial (repeatable), e.g. --set data.root=/data/cifar10")
    p.add_argument("--storage", default=None, help="Ray Tune storage directory (default: ./ray_results)")
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the local Ray (ignored with --address)")
    p.add_argument("--no-select", action="store_true",
                   help="skip the selector run that writes menus for study.devices from the best trial")
    p.set_defaults(func=_cmd_search)


def _cmd_train(args: argparse.Namespace) -> int:
    from gatesearch.config import load, with_overrides
    from gatesearch.resolve import check_names
    from gatesearch.train import ConsoleReporter, TrainingDiverged, fit

    cfg = load(args.config, args.set or [])
    if args.tracking_uri:
        cfg = with_overrides(cfg, {"tracking.uri": args.tracking_uri})
    check_names(cfg)  # model, method, cost-axis device: the same one line, before any work
    preflight.check_output_dir(cfg.train.out_dir, "train.out_dir")
    earlier = Path(cfg.train.out_dir).expanduser() / "last.pt"
    if args.resume is None and earlier.exists():  # fit would start at epoch 0 and overwrite it
        raise UserError(f"train.out_dir: {earlier} is an earlier run's checkpoint; continue it with --resume {earlier}, "
                        "or set another train.out_dir")
    preflight.torch_device(cfg.train.device, "train.device")
    if args.resume:
        from gatesearch.checkpoint import load_checkpoint

        done = load_checkpoint(args.resume).epoch + 1
        if done >= cfg.train.epochs:  # nothing to train: no run is opened
            print(f"{args.resume} has trained {done} of train.epochs={cfg.train.epochs} epochs: nothing to resume")
            return 0
    reporters: list = [ConsoleReporter(cfg.train.log_every)]
    if not args.no_mlflow:
        from gatesearch.tracking import MLflowReporter, check_tracking_uri, resumed_run_id

        check_tracking_uri(cfg.tracking.uri)
        run_id = resumed_run_id(cfg.tracking.uri, Path(args.resume).parent) if args.resume else None
        reporters.append(MLflowReporter(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.run_name, run_id=run_id))
    # SIGTERM (a scheduler, `kill`) ends the run as Ctrl+C does: KILLED with its reason, resumable, never RUNNING
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = fit(cfg, reporters, resume_from=args.resume)
    except TrainingDiverged as e:
        print(f"gatesearch train: {e}", file=sys.stderr)
        return 1
    except UserError as e:  # the tracking server stopped answering (tracking.TrackingUnavailable), ...
        kept = Path(cfg.train.out_dir).expanduser() / "last.pt"
        if kept.is_file():  # the epochs trained so far are kept: say how to go on
            raise UserError(f"{e}; the checkpoint {kept} is kept: continue with --resume {kept}") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    shown = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith(("top1_super", "top1_base", "frontier"))}
    print(f"done: {shown}  checkpoint: {result.checkpoint_path}")
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("killed by SIGTERM")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one model with one method (config YAML + --set overrides)")
    p.add_argument("--config", help="YAML config (defaults for every key it leaves out)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted key, e.g. method.adn.alpha=0.3")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default from config: {DEFAULT_TRACKING_URI})")
    p.add_argument("--resume", metavar="PATH", help="continue from this checkpoint (last.pt)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_cmd_train)


# ---------------------------------------------------------------- selection area: select | devices | profile | export


def _cmd_select(args: argparse.Namespace) -> int:
    from gatesearch.config import check_path_name
    from gatesearch.selection.pareto import format_menu, pick
    from gatesearch.selection.select import SelectOptions, run_select

    preflight.check_output_dir(args.out, "--out")
    preflight.torch_device(args.torch_device, "--torch-device")
    if args.register is not None:
        if not args.run:
            raise UserError("--register needs --run: the model version links to the trial's MLflow run")
        check_path_name(args.register, "--register")
    if args.run:
        from gatesearch.tracking import check_tracking_uri

        check_tracking_uri(args.tracking_uri, what="--tracking-uri")
    menus, files = run_select(SelectOptions(
        devices=tuple(args.device), out=args.out, checkpoint=args.checkpoint, run=args.run,
        tracking_uri=args.tracking_uri, budget_ms=args.budget_ms, lut=args.lut, data_root=args.data_root,
        reestimate_bn=args.reestimate_bn, batch=args.batch, torch_device=args.torch_device, threads=args.threads,
        lut_any_device=args.lut_any_device,
    ))
    for menu in menus:
        print(format_menu(menu, limit=args.limit, budget_ms=args.budget_ms))
        print()
    if args.budget_ms is not None and all(pick(m, args.budget_ms) is None for m in menus):
        print(f"gatesearch select: nothing fits {args.budget_ms} ms on any device", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in files.values()) + (f"; logged to MLflow run {args.run}" if args.run else ""))
    if args.register:
        from gatesearch.bundle import register_menus

        versions = register_menus(menus, args.out, menus[0].checkpoint, args.tracking_uri, args.run, args.register)
        print("registered " + ", ".join(f"models:/{args.register}@{d} (version {v})" for d, v in versions.items()))
    return 0


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="score every sub-network of a checkpoint and write per-device Pareto menus")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint file (last.pt)")
    src.add_argument("--run", help="MLflow run id: use its checkpoint artifact and log the menus to it")
    p.add_argument("--device", action="append", required=True, help="device profile (repeatable), e.g. jetson, h100, host")
    p.add_argument("--budget-ms", type=positive_float, default=None,
                   help="print the most accurate entry within this latency (ms, > 0)")
    p.add_argument("--lut", default=None, help="latency lookup table from `gatesearch profile` (CSV)")
    p.add_argument("--lut-any-device", action="store_true",
                   help="use the LUT even though its device column names none of the requested devices")
    p.add_argument("--out", default="outputs/select", help="output directory (menus, figures)")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI (with --run)")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="with --run: export each device's Pareto entries as a bundle and register it as MLflow model "
                        "NAME with the device as alias (models:/NAME@DEVICE; predict takes params budget_ms)")
    p.add_argument("--data-root", default=None, help="override the checkpoint's data.root")
    p.add_argument("--reestimate-bn", type=nonneg_int, default=None, metavar="N",
                   help="re-estimate BN statistics per candidate from N training batches "
                        "(default: as the checkpoint was trained, train.bn_reestimate_batches)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size the latencies are for")
    p.add_argument("--torch-device", default="cpu", help="where to score: cpu | cuda | auto")
    p.add_argument("--limit", type=nonneg_int, default=40, help="rows printed per menu")
    p.add_argument("--threads", type=nonneg_int, default=1,
                   help="torch CPU threads for scoring and host timing (1: stable timings on a shared machine; "
                   "0: leave as is)")
    p.set_defaults(func=_cmd_select)


def _cmd_devices(args: argparse.Namespace) -> int:
    from gatesearch.devices.profiles import device_profiles, get_device

    print(f"{'device':<24} {'aliases':<8} {'FP16 TF/s':>10} {'FP32 TF/s':>10} {'GB/s':>8} {'launch us':>9} "
          f"{'eff':>5} {'prec':>5}  source")
    for prof in device_profiles():
        if prof.measure and not args.measure_host:
            print(f"{prof.name:<24} {'':<8} {'(measured at first use; --measure-host to run it now)':<53}  {prof.source}")
            continue
        if prof.measure:
            prof = get_device(prof.name)
        print(f"{prof.name:<24} {','.join(prof.aliases):<8} {prof.peak_tflops_fp16:10.3f} {prof.peak_tflops_fp32:10.3f} "
              f"{prof.mem_bandwidth_gbs:8.1f} {prof.launch_overhead_us:9.1f} {prof.efficiency:5.2f} "
              f"{prof.precision:>5}  {prof.source}")
    return 0


def _add_devices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list the device profiles the latency model knows")
    p.add_argument("--measure-host", action="store_true", help="run the host micro-benchmark to fill in its row")
    p.set_defaults(func=_cmd_devices)


def _cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from gatesearch.checkpoint import load_checkpoint
    from gatesearch.devices.lut import write_lut
    from gatesearch.devices.timing import profile_rows

    preflight.check_output_file(args.out, "--out")  # before minutes of timing, not after
    preflight.torch_device(args.torch_device, "--torch-device")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.torch_device if args.torch_device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    ck = load_checkpoint(args.checkpoint, map_location=dev)
    name = args.device_name or (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "host")
    rows = profile_rows(ck.model, tuple(ck.input_shape), args.batch, args.runs, args.warmup, name)
    path = write_lut(args.out, rows)
    for r in rows:
        print(f"{r.pattern:<14} batch {r.batch}  median {r.median_ms:9.4f} ms  p90 {r.p90_ms:9.4f} ms")
    print(f"wrote {path} ({len(rows)} rows, device {name!r})")
    return 0


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure every pattern's latency on this machine into a LUT (CSV)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="LUT CSV: pattern,batch,median_ms,p90_ms,runs,device")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--runs", type=positive_int, default=30)
    p.add_argument("--warmup", type=nonneg_int, default=5)
    p.add_argument("--device-name", default=None, help="device column, e.g. jetson-orin-nano (default: host / GPU name)")
    p.add_argument("--torch-device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch CPU threads (0: leave as is)")
    p.set_defaults(func=_cmd_profile)


def _export_file(out: str, pattern: str, fmt: str) -> str:
    """``--out`` as given, or a file inside it named for the pattern (``TFFT.onnx``, ``TFFT.pt``) when it ends
    with a slash or is an existing directory (a bad pattern is refused before anything is written)."""
    if out.endswith(("/", os.sep)) or Path(out).expanduser().is_dir():
        return str(Path(out).expanduser() / f"{pattern.strip().upper()}.{'onnx' if fmt == 'onnx' else 'pt'}")
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    if args.menu is not None:
        return _export_bundle(args)
    from gatesearch.checkpoint import load_checkpoint
    from gatesearch.cost import count_params
    from gatesearch.export import export
    from gatesearch.patterns import SkipPattern

    if args.checkpoint is None:
        raise UserError("--pattern needs --checkpoint")
    out = _export_file(args.out, args.pattern, args.format)
    preflight.check_output_file(out, "--out")
    ck = load_checkpoint(args.checkpoint)
    try:
        pattern = SkipPattern.parse(args.pattern, ck.model.n_units)
    except ValueError as e:
        raise UserError(str(e)) from None
    path = export(ck.model, pattern, args.format, out, tuple(ck.input_shape), args.batch)
    params = count_params(ck.model, pattern, (1, *ck.input_shape))
    print(f"wrote {path} ({args.format}, pattern {pattern}, {params / 1e6:.3f} M params)")
    return 0


def _export_bundle(args: argparse.Namespace) -> int:
    from gatesearch.bundle import write_bundle

    if args.format != "onnx":
        raise UserError("--menu writes ONNX bundles; --format torchscript is for one --pattern")
    result = write_bundle(args.menu, args.out, args.checkpoint, args.entries, args.batch)
    r = result.record
    print(f"{r['model']} on {r['dataset']} -> {r['device']}: {len(r['entries'])} entries ({args.entries})")
    for e in r["entries"]:
        print(f"  {e['file']:<28} top-1 {e['top1']:.4f}  {e['latency_ms']:9.4f} ms ({e['latency_source']})")
    for s in r["skipped"]:
        print(f"  skipped {s['pattern']} ({s['strategy']}): {s['reason']}")
    print(f"wrote {result.path}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export one sub-network (--pattern) as ONNX or TorchScript, or a device's "
                                      "menu (--menu) as a deploy bundle: one ONNX per entry + bundle.json")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pattern", help="T/F per unit, T = skipped (e.g. TFFT); needs --checkpoint")
    what.add_argument("--menu", help="a device's menu.json from `gatesearch select`: write a bundle into --out")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (with --menu: default the menu's checkpoint)")
    p.add_argument("--entries", default="pareto", choices=["pareto", "all"], help="with --menu: which entries")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="the model file (--pattern) or the bundle directory (--menu)")
    p.add_argument("--batch", type=positive_int, default=1, help="example batch for tracing (ONNX batch axis is dynamic)")
    p.set_defaults(func=_cmd_export)


# Each area registers its subcommands here: (module, function taking the subparsers object).
_SUBCOMMANDS: list[tuple[str, str]] = [
    ("gatesearch.cli", "_add_patterns"),
    ("gatesearch.cli", "_add_train"),
    ("gatesearch.cli", "_add_search"),
    ("gatesearch.cli", "_add_select"),
    ("gatesearch.cli", "_add_devices"),
    ("gatesearch.cli", "_add_profile"),
    ("gatesearch.cli", "_add_export"),
]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="gatesearch",
        description="Train gated-depth ResNets, search their recipe with Ray Tune + Optuna, "
        "and select per-device Pareto menus of sub-networks (MLflow-tracked).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, fn in _SUBCOMMANDS:
        add: Callable[[argparse._SubParsersAction], None] = getattr(importlib.import_module(module), fn)
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line + hint, exit 2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"gatesearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gatesearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
