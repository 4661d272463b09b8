"""Does skipping a unit save the time its MACs promise, and what does gating cost at full depth?

For resnet50 and mobilenet_v2 (ImageNet stem, batch 8, 224x224) and resnet20 (CIFAR stem, batch
64, 32x32) on this host: measured latency of every skip pattern next to its MAC ratio, the base/super latency
ratio against the base/super MAC ratio (target: within 0.08; ADN reports 0.64 latency at 0.63
MACs), and the full-depth gated model against the same network built with gating="none" (target:
at most 3% slower; the Gated Depth paper reports ~4%). Timings are interleaved across variants
round by round, so drift and neighbours' load hit every variant alike; ratios are the median over
rounds of per-round ratios (paired), absolute times the best round (noise only ever adds time). Both memory layouts are timed:
NCHW (PyTorch's default) and channels_last (oneDNN's native layout on CPU, what a deployment
uses); in NCHW the memory-bound layers of the mandatory early stages cost more per MAC than the
skippable late ones, so the latency ratio lags the MAC ratio there.

For vit_b_16 / swin_t (batch 2, 224x224; ``--ends``: only super, base and no-gating, more rounds in
the same time) and vit_ti_4 / swin_nano_2 (batch 16, 32x32) the same
table: base/super latency next to the MAC ratio (ADN Table 1, RTX 3090: 0.65 ViT-b/16, 0.54 Swin-T;
channels_last only changes their patch-embedding conv).

    python benchmarks/skip_speed.py [--rounds 7] [--threads N] [--quick] [--models mobilenet_v2 vit_b_16 swin_t ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from gatesearch.cost import count_macs
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern, all_patterns

CASES = [  # name, stem, batch, image size
    ("resnet50", "imagenet", 8, 224),
    ("mobilenet_v2", "imagenet", 8, 224),
    ("resnet20", "cifar", 64, 32),
    # transformers (ADN Table 1 on an RTX 3090, batch 64: base/super latency 0.65 ViT-b/16, 0.54 Swin-T);
    # batch 2 at 224x224 keeps 34 variants x rounds of ViT-B/16 to minutes on a CPU
    ("vit_b_16", "imagenet", 2, 224),
    ("swin_t", "imagenet", 2, 224),
    ("vit_ti_4", "cifar", 16, 32),
    ("swin_nano_2", "cifar", 16, 32),
]


def time_variants(variants: dict[str, tuple[torch.nn.Module, object, torch.Tensor]], rounds: int, inner: int
                  ) -> dict[str, list[float]]:
    """ms per forward of each (model, gates, input) variant in every round, interleaved round by round."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for model, gates, x in variants.values():  # warm-up (oneDNN primitives are built on first use)
            model(x, gates)
        for r in range(rounds):
            order = list(variants.items())
            for key, (model, gates, x) in order if r % 2 == 0 else order[::-1]:  # alternate: no position bias
                t0 = time.perf_counter()
                for _ in range(inner):
                    model(x, gates)
                samples[key].append((time.perf_counter() - t0) * 1e3 / inner)
    return samples


def paired_ratio(samples: dict[str, list[float]], key: str, ref: str) -> float:
    """Median over rounds of ``key``'s time over ``ref``'s time in the same round: load that comes and
    goes on a shared machine hits both sides of each ratio alike."""
    return statistics.median(a / b for a, b in zip(samples[key], samples[ref]))


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def run_case(name: str, stem: str, batch: int, size: int, rounds: int, inner: int, ends: bool = False) -> list[str]:
    """Every pattern (``ends``: only the super-net and the base-net) in both memory layouts (NCHW, and
    channels_last: oneDNN's native CPU layout, what a deployment runs), plus the no-gating reference in
    each, timed interleaved in one loop."""
    torch.manual_seed(0)
    classes = 1000 if stem == "imagenet" else 10
    gated = create_model(name, classes, gating="stage", stem=stem).eval()
    plain = create_model(name, classes, gating="none", stem=stem).eval()
    x = torch.randn(batch, 3, size, size)
    shape = tuple(x.shape)
    patterns = all_patterns(gated.n_units)
    if ends:  # fewer variants, so more rounds fit in the same time on a loaded machine
        patterns = [patterns[0], patterns[-1]]
    variants: dict[str, tuple[torch.nn.Module, object, torch.Tensor]] = {}
    for layout, fmt in LAYOUTS.items():
        g, n = copy.deepcopy(gated).to(memory_format=fmt), copy.deepcopy(plain).to(memory_format=fmt)
        xl = x.contiguous(memory_format=fmt)
        variants |= {f"{layout}:{p}": (g, p, xl) for p in patterns}
        variants[f"{layout}:no-gating"] = (n, None, xl)
    samples = time_variants(variants, rounds, inner)
    ms = {k: min(v) for k, v in samples.items()}  # best round: the absolute times printed
    full_macs = count_macs(gated, SkipPattern.super_net(gated.n_units), shape)
    macs = {str(p): count_macs(gated, p, shape) / full_macs for p in patterns}
    sup, base = str(patterns[0]), str(patterns[-1])
    lines = [f"\n{name}  batch={batch}  {size}x{size}  units={gated.n_units}  (T = unit skipped; best-round ms per "
             f"forward; ratio = median over {rounds} rounds of the same round's time / super-net's)",
             f"{'pattern':<10}{'MAC ratio':>10}" + "".join(f"{lay + ' ms':>19}{'ratio':>7}{'diff':>8}" for lay in LAYOUTS)]
    for p in map(str, patterns):
        row = f"{p:<10}{macs[p]:>10.3f}"
        for lay in LAYOUTS:
            r = paired_ratio(samples, f"{lay}:{p}", f"{lay}:{sup}")
            row += f"{ms[f'{lay}:{p}']:>19.2f}{r:>7.3f}{r - macs[p]:>+8.3f}"
        lines.append(row)
    for lay in LAYOUTS:
        ratio = paired_ratio(samples, f"{lay}:{base}", f"{lay}:{sup}")
        gap = abs(ratio - macs[base])
        overhead = paired_ratio(samples, f"{lay}:{sup}", f"{lay}:no-gating") - 1
        lines.append(f"{lay:<13} base/super latency {ratio:.3f} vs MACs {macs[base]:.3f}: |diff| {gap:.3f} "
                     f"(target <= 0.08: {'PASS' if gap <= 0.08 else 'FAIL'});  full-depth gated vs gating='none' "
                     f"({ms[f'{lay}:{sup}']:.2f} / {ms[f'{lay}:no-gating']:.2f} ms): {overhead:+.1%} "
                     f"(target <= 3%: {'PASS' if overhead <= 0.03 else 'FAIL'})")
    lines.append(f"channels_last / nchw at full depth: {paired_ratio(samples, f'channels_last:{sup}', f'nchw:{sup}'):.2f}x"
                 " the time")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per variant")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="resnet20 only (a smoke run)")
    ap.add_argument("--models", nargs="+", default=None, help="only these cases (default: all)")
    ap.add_argument("--ends", action="store_true",
                    help="time only the super-net and the base-net (more rounds in the same time on large models)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}  threads={torch.get_num_threads()}  device=cpu  rounds={args.rounds}")
    cases = [c for c in CASES if c[0] == "resnet20"] if args.quick else CASES
    for name, stem, batch, size in [c for c in cases if args.models is None or c[0] in args.models]:
        inner, rounds = (1, args.rounds) if stem == "imagenet" else (3, 3 * args.rounds)  # small model: more samples
        print("\n".join(run_case(name, stem, batch, size, rounds, inner, args.ends)), flush=True)


if __name__ == "__main__":
    main()
