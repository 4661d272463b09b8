"""Does skipping a unit save the time its MACs promise, and what does gating cost at full depth?

For resnet50 (ImageNet stem, batch 8, 224x224) and resnet20 (CIFAR stem, batch 64, 32x32) on
this host: measured latency of every skip pattern next to its MAC ratio, the base/super latency
ratio against the base/super MAC ratio (target: within 0.08; ADN reports 0.64 latency at 0.63
MACs), and the full-depth gated model against the same network built with gating="none" (target:
at most 3% slower; the Gated Depth paper reports ~4%). Timings are interleaved across variants
round by round, so drift and neighbours' load hit every variant alike; each variant's best
round is reported (as timeit does: noise only ever adds time).

    python benchmarks/skip_speed.py [--rounds 7] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from gatesearch.cost import count_macs
from gatesearch.models import create_model
from gatesearch.patterns import SkipPattern, all_patterns

CASES = [  # name, stem, batch, image size
    ("resnet50", "imagenet", 8, 224),
    ("resnet20", "cifar", 64, 32),
]


def time_variants(variants: dict[str, tuple[torch.nn.Module, object]], x: torch.Tensor, rounds: int, inner: int) -> dict[str, float]:
    """Best-round ms per forward for each (model, gates) variant, interleaved round by round."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for model, gates in variants.values():  # warm-up
            model(x, gates)
        for r in range(rounds):
            order = list(variants.items())
            for key, (model, gates) in order if r % 2 == 0 else order[::-1]:  # alternate order: no position bias
                t0 = time.perf_counter()
                for _ in range(inner):
                    model(x, gates)
                samples[key].append((time.perf_counter() - t0) * 1e3 / inner)
    return {k: min(v) for k, v in samples.items()}


def run_case(name: str, stem: str, batch: int, size: int, rounds: int, inner: int) -> list[str]:
    torch.manual_seed(0)
    gated = create_model(name, 1000 if stem == "imagenet" else 10, gating="stage", stem=stem).eval()
    plain = create_model(name, 1000 if stem == "imagenet" else 10, gating="none", stem=stem).eval()
    x = torch.randn(batch, 3, size, size)
    shape = tuple(x.shape)
    patterns = all_patterns(gated.n_units)
    variants: dict[str, tuple[torch.nn.Module, object]] = {str(p): (gated, p) for p in patterns}
    variants["no-gating"] = (plain, None)
    ms = time_variants(variants, x, rounds, inner)
    full_macs = count_macs(gated, SkipPattern.super_net(gated.n_units), shape)
    sup = ms[str(patterns[0])]
    lines = [f"\n{name}  batch={batch}  {size}x{size}  units={gated.n_units}  (T = unit skipped)",
             f"{'pattern':<10}{'MAC ratio':>10}{'latency ms':>12}{'lat ratio':>10}{'diff':>8}"]
    for p in patterns:
        mac_ratio = count_macs(gated, p, shape) / full_macs
        lat_ratio = ms[str(p)] / sup
        lines.append(f"{str(p):<10}{mac_ratio:>10.3f}{ms[str(p)]:>12.2f}{lat_ratio:>10.3f}{lat_ratio - mac_ratio:>+8.3f}")
    base = str(patterns[-1])
    mac_base = count_macs(gated, patterns[-1], shape) / full_macs
    gap = abs(ms[base] / sup - mac_base)
    overhead = sup / ms["no-gating"] - 1
    lines.append(f"base/super: latency ratio {ms[base] / sup:.3f} vs MAC ratio {mac_base:.3f}  "
                 f"|diff| {gap:.3f}  (target <= 0.08: {'PASS' if gap <= 0.08 else 'FAIL'})")
    lines.append(f"full-depth gated {sup:.2f} ms vs gating='none' {ms['no-gating']:.2f} ms: overhead {overhead:+.1%}  "
                 f"(target <= 3%: {'PASS' if overhead <= 0.03 else 'FAIL'})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per variant")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="resnet20 only (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}  threads={torch.get_num_threads()}  device=cpu  rounds={args.rounds}")
    for name, stem, batch, size in CASES[1:] if args.quick else CASES:
        inner, rounds = (1, args.rounds) if name == "resnet50" else (3, 3 * args.rounds)  # small model: more samples
        print("\n".join(run_case(name, stem, batch, size, rounds, inner)), flush=True)


if __name__ == "__main__":
    main()
