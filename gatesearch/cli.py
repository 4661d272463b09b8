"""``gatesearch`` command line: train | search | select | profile | export | devices | patterns.

Handlers only parse, call and print. A ``UserError`` (bad config, unknown device, missing
checkpoint, ...) becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from gatesearch.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def _cmd_patterns(args: argparse.Namespace) -> int:
    from gatesearch.cost import count_macs, count_params
    from gatesearch.models import create_model
    from gatesearch.patterns import all_patterns

    try:
        model = create_model(args.model, args.num_classes, gating=args.gating, stem=args.stem)
    except (KeyError, ValueError) as e:
        raise UserError(str(e).strip("'\"")) from None
    shape = (1, 3, args.image_size, args.image_size)
    full_macs = count_macs(model, None, shape)
    full_params = count_params(model, None, shape)
    print(f"{args.model}  gating={args.gating}  stem={args.stem}  units={model.n_units}  input={list(shape)}")
    print(f"{'pattern':<{max(8, model.n_units)}}  {'MMACs':>9}  {'MAC ratio':>9}  {'params (M)':>10}")
    for p in all_patterns(model.n_units)[: args.limit]:
        macs, params = count_macs(model, p, shape), count_params(model, p, shape)
        print(f"{str(p):<{max(8, model.n_units)}}  {macs / 1e6:9.2f}  {macs / full_macs:9.3f}  {params / 1e6:10.3f}")
    print(f"(T = unit skipped; super-net params {full_params / 1e6:.3f} M)")
    return 0


def _add_patterns(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patterns", help="build a model and print MACs/params of every skip pattern")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--gating", default="stage", choices=["stage", "block", "none"])
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=64, help="print at most this many patterns")
    p.set_defaults(func=_cmd_patterns)


# Each area registers its subcommands here: (module, function taking the subparsers object).
_SUBCOMMANDS: list[tuple[str, str]] = [
    ("gatesearch.cli", "_add_patterns"),
]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
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
    args = build_parser().parse_args(argv)
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
