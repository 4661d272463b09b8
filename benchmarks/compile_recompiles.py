"""How many times ``train.compile`` re-traces the training step in one epoch of each method.

``train.CompiledModel`` compiles the three calls a method makes into the model (``forward``,
``forward_patterns``, ``forward_from_stem``). A ``SkipPattern`` is a Python value, so dynamo keeps
one graph per pattern it has seen: a step re-traces only on a pattern (or shape) new to it, never
per step, and at most ``2**n_units`` times; past its limit of graphs per function
(``gatesearch.train.compile_recompile_limit``: every pattern up to 4 units, dynamo's default above) dynamo stops
compiling it and runs the rest of the run eagerly (``fallback``). Each row
trains one epoch of digits (resnet20, batch 32) from a clean dynamo cache, then reads the cache
entries of those functions: ``graphs`` (entries), ``recompiles`` (entries beyond the first of each
function), ``graph_breaks`` (dynamo's counter). ``epoch s`` is the epoch's training time with
compile over the same epoch eagerly, in this process (the backend's compile time included: the
price of each re-trace).

    python benchmarks/compile_recompiles.py [--backend aot_eager|inductor|eager] [--steps N] [--only ROW ...]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from typing import Any

import torch
import torch._dynamo
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.utils import counters

from gatesearch.config import from_flat
from gatesearch.models.base import GatedNet
from gatesearch.resolve import check_names
from gatesearch.train import fit

ROWS: dict[str, dict[str, Any]] = {
    "plain": {"method.name": "plain"},
    "stochastic_depth": {"method.name": "stochastic_depth"},
    "gated_depth": {"method.name": "gated_depth"},
    "gated_depth (block)": {"method.name": "gated_depth", "model.gating": "block"},
    "stochastic_depth (resnet18)": {"method.name": "stochastic_depth", "model.name": "resnet18"},
    "adn": {"method.name": "adn"},
    "adn (two_backward)": {"method.name": "adn", "method.adn.two_backward": True},
    "probgates (logit)": {"method.name": "probgates", "model.gate_head": "logit"},
    "probgates (aig, block)": {"method.name": "probgates", "model.gate_head": "aig", "model.gating": "block"},
}
ENTRY_POINTS = (GatedNet.forward, GatedNet.forward_patterns, GatedNet.forward_from_stem)


def _run(flat: dict[str, Any], compile_: str, steps: int | None) -> tuple[float, int]:
    """(training seconds of one epoch, n_units) of ``flat`` with ``train.compile=compile_``."""
    with tempfile.TemporaryDirectory() as out:
        cfg = check_names(from_flat({"model.name": "resnet20", "data.name": "digits", "data.batch_size": 32,
                                     "train.epochs": 1, "train.device": "cpu", "train.out_dir": out,
                                     "train.compile": compile_, "train.max_steps_per_epoch": steps, **flat}))
        res = fit(cfg)
    return res.metrics["train_time_s"], res.model.n_units


def _entries() -> list[int]:
    return [len(_debug_get_cache_entry_list(f.__code__)) for f in ENTRY_POINTS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="aot_eager", choices=["aot_eager", "inductor", "eager"])
    ap.add_argument("--steps", type=int, default=None, help="cap the epoch (default: the whole digits epoch, 40)")
    ap.add_argument("--only", nargs="*", default=None, choices=list(ROWS))
    args = ap.parse_args()
    limit = torch._dynamo.config.recompile_limit
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, device cpu, "
          f"backend {args.backend}, dynamo's recompile_limit {limit}; resnet20 (unless named) on digits, batch 32, "
          "one epoch")
    head = f"{'row':<28} {'units':>5} {'graphs':>14} {'recompiles':>10} {'breaks':>6} {'fallback':>8} {'epoch s':>14}"
    print(head + "\n" + "-" * len(head))
    for name in args.only or ROWS:
        torch._dynamo.reset()
        counters.clear()
        t_eager, _ = _run(ROWS[name], "off", args.steps)
        t_comp, n_units = _run(ROWS[name], args.backend, args.steps)
        e = _entries()
        recompiles = sum(max(0, k - 1) for k in e)
        breaks = sum(counters["graph_break"].values())
        fallback = "yes" if any("recompile limit" in k for k in counters["unimplemented"]) else "no"
        graphs = "/".join(str(k) for k in e)
        ratio = f"{t_comp:.1f}/{t_eager:.1f}={t_comp / t_eager:.1f}x"
        print(f"{name:<28} {n_units:>5} {graphs:>14} {recompiles:>10} {breaks:>6} {fallback:>8} {ratio:>14}", flush=True)
    print("graphs: cache entries of forward/forward_patterns/forward_from_stem; recompiles: entries beyond the first "
          "of each; fallback: a function reached recompile_limit (later new patterns ran eagerly)")


if __name__ == "__main__":
    main()
