"""Render ``docs/results/<table>/*.json`` (written by ``reproduce_cifar.py``) into ``docs/RESULTS.md``
and a frontier plot: no number in that section is typed by hand.

    python benchmarks/render_results.py                       # docs/results/cifar10_resnet20 -> docs/RESULTS.md
    python benchmarks/render_results.py --table cifar10_resnet20_e160

The section between ``<!-- results:<table>:begin -->`` and ``<!-- results:<table>:end -->`` is
replaced (appended when absent): the per-pattern test top-1 of every finished run, each run's
frontier score, the paper claims checked against the numbers (ADN Table 1, Gated Depth Sec. 6.2,
probabilistic gates Sec. 4), ``docs/results/<table>/frontier.png`` (top-1 vs MACs, every run) and,
once a probgates run exists, ``probgates_sweep.png`` (top-1 vs activation over the threshold sweep).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gatesearch.evaluate.frontier import pareto_mask
from gatesearch.stats import (
    holm,
    p_value,
    paired_difference,
    sample_std,
    single_run_difference,
    t_interval,
    verdict,
    verdict_kind,
)

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["plain_full", "plain_base", "stochastic_depth", "adn", "gated_depth", "probgates_per_gate",
         "probgates_per_batch"]
HALF = "threshold:0.50"  # the paper's MAP rule (002 Sec. 3.2, tau = 1/2)


def load_runs(folder: Path) -> dict[str, dict[str, Any]]:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    return dict(sorted(runs.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


def _fixed(rec: dict[str, Any], split: str = "test") -> dict[str, dict[str, Any]]:
    """Pattern -> candidate row (the calibrated full network stands for its pattern)."""
    return {c["pattern"]: c for c in rec[split]["candidates"] if c["strategy"] in ("pattern", "calibrated")}


def _strategies(rec: dict[str, Any], split: str = "test") -> dict[str, dict[str, Any]]:
    return {c["strategy"]: c for c in rec[split]["candidates"] if c["strategy"] not in ("pattern", "calibrated")}


def _top1(rec: dict[str, Any], ones: str, split: str = "test") -> float:
    """Top-1 of the pattern ``ones * n_units`` (``"F"``: the super-net, ``"T"``: the base-net)."""
    return _fixed(rec, split)[ones * rec["n_units"]]["top1"]


def pattern_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    patterns = sorted({p for r in runs.values() for p in _fixed(r)}, key=lambda p: (p.count("T"), p))
    head = "| run | " + " | ".join(f"`{p}`" for p in patterns) + " | std over patterns | frontier score (test) | val | epochs | train h |"
    lines = [head, "|---" * (len(patterns) + 6) + "|"]
    for name, r in runs.items():
        fixed = _fixed(r)
        accs = [fixed[p]["top1"] for p in patterns if p in fixed]
        cells = [f"{100 * fixed[p]['top1']:.2f}" + ("*" if fixed[p]["strategy"] == "calibrated" else "")
                 if p in fixed else "-" for p in patterns]
        hours = (r.get("train_time_s") or 0.0) / 3600
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * sample_std(accs):.2f} | {r['test']['frontier_score']:.4f} "
                     f"| {r['val']['frontier_score']:.4f} | {r['epochs']} | {hours:.2f} |")
    any_run = next(iter(runs.values()))
    macs = {p: c["macs"] for p, c in _fixed(any_run).items()}
    lines.append("| MMACs | " + " | ".join(f"{macs[p] / 1e6:.2f}" if p in macs else "-" for p in patterns) + " | | | | | |")
    return lines


def _activation(c: dict[str, Any]) -> float:
    """Mean unit execution rate; 1.0 when a candidate records none (every unit runs), as in
    ``gatesearch.selection.select``."""
    rates = c["unit_rates"]
    return sum(rates) / len(rates) if rates else 1.0


def _sweep(rec: dict[str, Any], split: str = "test") -> list[tuple[float, float]]:
    """The threshold sweep of a probgates run as (activation, top-1) points, by activation."""
    return sorted((_activation(c), c["top1"]) for s, c in _strategies(rec, split).items() if s.startswith("threshold:"))


def at_activation(points: list[tuple[float, float]], a: float) -> float | None:
    """Top-1 at activation ``a`` read off a sweep by linear interpolation between its two neighbouring
    points (the best top-1 among points at exactly ``a``); ``None`` outside the sweep's range."""
    if not points or not points[0][0] <= a <= points[-1][0]:
        return None
    exact = [y for x, y in points if x == a]
    if exact:
        return max(exact)
    (x0, y0), (x1, y1) = next((p, q) for p, q in zip(points, points[1:]) if p[0] < a < q[0])
    return y0 + (y1 - y0) * (a - x0) / (x1 - x0)


def strategy_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Threshold 0.5 (the paper's MAP rule, 002 Sec. 3.2) and the other strategies; the rest of the
    threshold sweep is in the sweep plot."""
    lines = ["| run | strategy | test top-1 | +- (runs) | activation | relative MACs |", "|---|---|---|---|---|---|"]
    for name, r in runs.items():
        for s, c in _strategies(r).items():
            if s.startswith("threshold:") and s != HALF:
                continue
            lines.append(f"| {name} | {s} | {100 * c['top1']:.2f} | {100 * c['top1_std']:.2f} | {_activation(c):.3f} "
                         f"| {c['cost']:.3f} |")
    return lines if len(lines) > 2 else []


def diagnostics_table(diag: dict[str, dict[str, Any]], reference: dict[str, Any] | None) -> list[str]:
    """The loop checks (``reproduce_cifar.DIAGNOSTICS``): what each changed against ``plain_full``
    (``reference``) and its full-depth top-1; the reference itself in the first row."""
    if not diag:
        return []
    lines = ["| run | changed from plain_full | full-depth test top-1 | val top-1 | epochs | train h |",
             "|---|---|---|---|---|---|"]
    ref_cfg = reference["config"] if reference else {}
    skip = {"train.out_dir", "tracking.run_name"}
    for name, r in ([("plain_full", reference)] if reference else []) + list(diag.items()):
        changed = ", ".join(f"`{k}={v}`" for k, v in sorted(r["config"].items())
                            if k not in skip and ref_cfg.get(k) != v) or "(the table's run)"
        lines.append(f"| {name} | {changed} | {100 * _top1(r, 'F'):.2f} | {100 * _top1(r, 'F', 'val'):.2f} "
                     f"| {r['epochs']} | {(r.get('train_time_s') or 0.0) / 3600:.2f} |")
    return lines


def single_runs(a: float, b: float, noise: list[float]) -> str:
    """``a - b`` in points for one run each, with its 95 % interval against ``noise`` (plain ResNet-20's
    seed/init runs, standing for every recipe's seed noise: ``stats.single_run_difference``) and the
    verdict, or "one run each: no interval" when fewer than two noise runs exist."""
    if len(noise) < 2:
        return f"{100 * (a - b):+.2f} points, one run each: no interval, no verdict"
    d = single_run_difference(a, b, noise)
    kind = verdict_kind(d)
    said = {"better": "higher", "worse": "lower"}.get(kind, "no difference detected")
    return f"{100 * d.mean:+.2f} points, 95 % interval [{100 * d.low:+.2f}, {100 * d.high:+.2f}]: {said}"


def probgates_claim(gate: dict[str, Any], batch: dict[str, Any], noise: list[float]) -> str:
    """002 Sec. 4 (CIFAR-10, target 0.5, threshold inference): "dependent per-batch has the best
    performance in both accuracy and average activation", i.e. per-batch's threshold-0.5 point
    dominates per-gate's (top-1 >= at activation <=). Also read at equal activation: per-batch's
    threshold sweep interpolated at per-gate's threshold-0.5 activation (``at_activation``). One run
    each: top-1 differences carry the interval of ``single_runs``; activations have no noise estimate."""
    head = "- **Probabilistic gates Sec. 4** (per-batch >= per-gate at equal activation, CIFAR-10): "
    g, b = (_strategies(r).get(HALF) for r in (gate, batch))
    if not (g and b):
        return head + "no threshold-0.5 result in one of the two runs."
    ag, ab = _activation(g), _activation(b)
    text = (f"at threshold 0.5 per-batch {100 * b['top1']:.2f} % at activation {ab:.3f} vs per-gate "
            f"{100 * g['top1']:.2f} % at {ag:.3f}: top-1 {single_runs(b['top1'], g['top1'], noise)}; activation "
            f"{ab - ag:+.3f} (one run each: no interval)")
    eq = at_activation(_sweep(batch), ag)
    if eq is None:
        text += f"; per-batch's threshold sweep does not reach activation {ag:.3f}, so no equal-activation reading"
    else:
        text += (f"; at per-gate's activation {ag:.3f} per-batch's threshold sweep reads {100 * eq:.2f} %, "
                 f"{single_runs(eq, g['top1'], noise)}")
    return head + text + "."


def claims(runs: dict[str, dict[str, Any]], diag: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Each paper's claim, checked on the test numbers; 'not run yet' where a run is missing."""
    out = []
    f = {k: _fixed(v) for k, v in runs.items()}
    every: list[float] = []  # plain ResNet-20's seed/init runs: the single-run comparisons' noise
    if "plain_full" in runs and runs["plain_full"]["epochs"] == 30:
        top = _top1(runs["plain_full"], "F")
        checks = {k: _top1(v, "F") for k, v in (diag or {}).items()}
        seen = ", ".join(f"{k} {100 * v:.2f} %" for k, v in checks.items())
        every = [top, *checks.values()]  # plain ResNet-20's seed/init spread: also the frontier claim's yardstick
        spread = (f"; over these {len(every)} runs {100 * min(every):.2f}-{100 * max(every):.2f} %, mean "
                  f"{100 * sum(every) / len(every):.2f} %, sample std {100 * sample_std(every):.2f} points, "
                  f"{sum(v >= 0.865 for v in every)} of {len(every)} at or above the bar") if checks else ""
        out.append(f"- **Sanity bar** (issue #16: plain full-depth ResNet-20 >= 86.5 % test top-1 at 30 epochs): "
                   f"{100 * top:.2f} % ({'met' if top >= 0.865 else 'not met'})"
                   + (f"; the loop checks below: {seen}" if seen else "") + spread + ".")

    def sup(k: str) -> float:
        return _top1(runs[k], "F")

    def base(k: str) -> float:
        return _top1(runs[k], "T")

    if every[1:]:
        out.append(f"- **How to read the comparisons below**: they are of single runs (one seed each). Each 95 % interval takes plain ResNet-20's "
                   f"seed/init spread above ({len(every)} runs) as every recipe's seed noise "
                   "(`stats.single_run_difference`: the difference of two runs has std s·√2, t with "
                   f"{len(every) - 1} degrees of freedom); \"higher\"/\"lower\" only when the interval excludes 0.")
    if {"adn", "plain_full", "plain_base"} <= set(runs):
        out.append(f"- **ADN Table 1** (super-net >= the individually trained full-depth net, base-net >= the "
                   f"individually trained base-depth net): super {100 * sup('adn'):.2f} vs {100 * sup('plain_full'):.2f}, "
                   f"{single_runs(sup('adn'), sup('plain_full'), every)}; base {100 * base('adn'):.2f} vs "
                   f"{100 * base('plain_base'):.2f}, {single_runs(base('adn'), base('plain_base'), every)}; the paper's "
                   "margins (001, Table 1, ImageNet, 150-300 epochs, four backbones): super-net +0.2 to +0.9, base-net "
                   "+0.0 to +1.1 points.")
    else:
        out.append("- **ADN Table 1**: not run yet (needs adn, plain_full, plain_base).")
    if {"adn", "gated_depth"} <= set(runs):
        sa = sample_std([c["top1"] for c in f["adn"].values()])
        sg = sample_std([c["top1"] for c in f["gated_depth"].values()])
        out.append(f"- **Gated Depth Sec. 6.2** (its sub-networks' top-1 spread is tighter than ADN's; 1.4 vs 2.0 points "
                   f"std on ImageNet): {100 * sg:.2f} vs {100 * sa:.2f} points std over the "
                   f"{len(f['gated_depth'])} patterns, one run each: no seed noise of a spread is measured here, so no "
                   "verdict (the block table below has it over seeds).")
    else:
        out.append("- **Gated Depth Sec. 6.2**: not run yet (needs adn, gated_depth).")
    if {"probgates_per_gate", "probgates_per_batch"} <= set(runs):
        out.append(probgates_claim(runs["probgates_per_gate"], runs["probgates_per_batch"], every))
    else:
        out.append("- **Probabilistic gates Sec. 4**: not run yet (needs probgates_per_gate, probgates_per_batch).")
    adaptive = [k for k in runs if not k.startswith("plain")]
    plains = [k for k in runs if k.startswith("plain")]
    if adaptive and plains:
        best = max(adaptive, key=lambda k: runs[k]["test"]["frontier_score"])
        top_plain = max(plains, key=lambda p: runs[p]["test"]["frontier_score"])
        out.append(f"- **Frontier score**: highest depth-adaptive run {best} {runs[best]['test']['frontier_score']:.4f}; "
                   + ", ".join(f"{p} {runs[p]['test']['frontier_score']:.4f}" for p in plains)
                   + f"; {best} minus {top_plain} (the frontier score is in top-1 units, so plain's top-1 noise stands "
                   f"for its noise): {single_runs(runs[best]['test']['frontier_score'], runs[top_plain]['test']['frontier_score'], every)}.")
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """Every candidate (dots) and each run's frontier (steps), top-1 vs MACs: the whole range on the
    left, and on the right the band within 10 points of the best top-1, where the frontiers differ."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    fronts = {}
    for name, r in runs.items():
        rows = [c for c in r["test"]["candidates"] if c["cost"] <= 1.0 + 1e-9]
        mask = pareto_mask([c["macs"] for c in rows], [c["top1"] for c in rows])
        front = sorted((c["macs"] / 1e6, 100 * c["top1"]) for c, m in zip(rows, mask) if m)
        fronts[name] = front
        reach = max(c["macs"] for c in rows) / 1e6  # the best top-1 within a budget holds up to the largest one
        xs, ys = [x for x, _ in front] + [reach], [y for _, y in front] + [front[-1][1]]
        for ax in axes:
            line = ax.step(xs, ys, where="post", marker="o", markevery=list(range(len(front))), label=name)
            ax.scatter([c["macs"] / 1e6 for c in rows], [100 * c["top1"] for c in rows], s=8, alpha=0.35,
                       color=line[0].get_color())
    top = max(y for f in fronts.values() for _, y in f)
    band = [y for f in fronts.values() for _, y in f if y >= top - 10.0]
    axes[1].set_ylim(min(band) - 0.5, top + 0.5)
    axes[0].set_title("CIFAR-10, ResNet-20: every candidate (dots), each run's frontier (steps)", fontsize=9)
    axes[1].set_title("the same, zoomed to the top 10 points", fontsize=9)
    for ax in axes:
        ax.set_xlabel("MMACs per image")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(fig, path)


def sweep_plot(runs: dict[str, dict[str, Any]], path: Path) -> bool:
    """Test top-1 vs activation over each probgates run's threshold sweep (threshold 0.5 ringed):
    the picture behind the Sec. 4 claim. Returns False (and writes nothing) without a sweep."""
    sweeps = {k: _sweep(r) for k, r in runs.items()}
    sweeps = {k: v for k, v in sweeps.items() if v}
    if not sweeps:
        return False
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in sweeps.items():
        line = ax.plot([x for x, _ in pts], [100 * y for _, y in pts], marker=".", label=name)
        half = _strategies(runs[name]).get(HALF)
        if half:
            ax.scatter([_activation(half)], [100 * half["top1"]], s=80, facecolors="none",
                       edgecolors=line[0].get_color())
    _label(ax, "activation (mean fraction of gated units run)", "test top-1 (%)",
           "probabilistic gates: threshold sweep (ring: threshold 0.5)")
    _save(fig, path)
    return True


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, a small title, a light grid and the legend: the look every figure here shares."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ----------------------------------------------------------------- tables with several seeds per recipe
# Runs named ``<recipe>_s<i>`` (``reproduce_cifar.py --table block``): seed index i set train.seed and
# data.split_seed, so two recipes at the same index share the split and are compared paired by seed.


def by_recipe(runs: dict[str, dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """``{recipe: {seed index: run}}``, recipes in ``ORDER``."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for name, r in runs.items():
        recipe, _, idx = name.rpartition("_s")
        if recipe and idx.isdigit():
            out.setdefault(recipe, {})[int(idx)] = r
    return dict(sorted(out.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


def _ladder(n: int) -> list[str]:
    """Super-net, then one more unit skipped from the last backwards, down to the base-net."""
    return ["".join("T" if i >= n - k else "F" for i in range(n)) for k in range(n + 1)]


def _mean_sd(values: list[float]) -> str:
    return f"{100 * sum(values) / len(values):.2f} ± {100 * sample_std(values):.2f}" if len(values) > 1 else f"{100 * values[0]:.2f}"


def seeded_candidate_table(recipes: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """Test top-1 (%) mean ± sample std over seeds of the ladder's patterns (the calibrated full network where
    a method calibrates), probgates' threshold 0.5, and the frontier score with its 95 % t-interval."""
    n = next(iter(next(iter(recipes.values())).values()))["n_units"]
    ladder = _ladder(n)
    lines = ["| recipe | seeds | " + " | ".join(f"`{p}`" for p in ladder) + " | threshold 0.5 | frontier score (test), "
             "95 % interval |", "|---" * (len(ladder) + 4) + "|"]
    for recipe, seeds in recipes.items():
        runs = [seeds[i] for i in sorted(seeds)]
        cells = []
        for p in ladder:
            vals = [_fixed(r)[p]["top1"] for r in runs if p in _fixed(r)]
            cells.append(_mean_sd(vals) if len(vals) == len(runs) else "-")
        half = [_strategies(r)[HALF]["top1"] for r in runs if HALF in _strategies(r)]
        frontier = [r["test"]["frontier_score"] for r in runs]
        iv = t_interval(frontier)
        score = (f"{iv.mean:.4f} ± {iv.std:.4f} [{iv.low:.4f}, {iv.high:.4f}]" if iv.n > 1
                 else f"{iv.mean:.4f} (one seed: no interval)")
        lines.append(f"| {recipe} | {', '.join(map(str, sorted(seeds)))} | " + " | ".join(cells)
                     + f" | {_mean_sd(half) if len(half) == len(runs) else '-'} | {score} |")
    return lines


def paired_rows(recipes: dict[str, dict[int, dict[str, Any]]], value: Any) -> list[tuple[str, str, Any]]:
    """Every pair of recipes with at least two common seed indices: ``(a, b, Interval of value(a) - value(b))``."""
    names = list(recipes)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(recipes[a]) & set(recipes[b]))
            if len(common) >= 2:
                out.append((a, b, paired_difference([value(recipes[a][s]) for s in common],
                                                     [value(recipes[b][s]) for s in common])))
    return out


def paired_table(recipes: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """Paired differences of the test frontier score between every two recipes, over their common seeds."""
    rows = paired_rows(recipes, lambda r: r["test"]["frontier_score"])
    if not rows:
        return ["No two recipes share two seed indices yet: no paired comparison."]
    lines = ["| a | b | seeds | a - b (frontier score, test) | 95 % interval | verdict for a |", "|---|---|---|---|---|---|"]
    for a, b, d in rows:
        lines.append(f"| {a} | {b} | {d.n} | {d.mean:+.4f} | [{d.low:+.4f}, {d.high:+.4f}] | {verdict(d)} |")
    return lines + ["", separation(rows)]


def separation(rows: list[tuple[str, str, Any]]) -> str:
    """Issue 24's question of the block table, "do the recipes' frontiers separate?", answered from the
    paired rows alone: the pairs whose interval excludes 0 (written ``winner > loser``) and those where no
    difference is detected (``a ~ b``). Each pair's verdict is a 95 % statement on its own; the question is
    asked of every pair at once, where about 1 in 20 pairs with no real difference would still look apart, so
    the line ends with the pairs that stay apart under Holm's correction (``stats.holm``, family-wise 5 %)."""
    apart, same, p = {}, [], {}  # apart: (a, b) -> "winner > loser", in the rows' order
    for a, b, d in rows:
        kind = verdict_kind(d)
        if kind in ("better", "worse"):
            apart[(a, b)] = f"{a} > {b}" if kind == "better" else f"{b} > {a}"
        elif kind == "no_difference":
            same.append(f"{a} ~ {b}")
        p[(a, b)] = p_value(d)
    line = (f"Do the frontiers separate? {len(apart)} of {len(rows)} pairs differ at 95 % (paired interval excludes 0): "
            f"{', '.join(apart.values()) or 'none'}; no difference detected for {len(same)}: {', '.join(same) or 'none'}.")
    tested = len(apart) + len(same)
    if tested >= 2:
        kept = [apart[k] for k in holm(p) if k in apart]
        line += (f" Asked of the {tested} pairs at once (Holm's correction, family-wise error 5 %), {len(kept)} "
                 f"still {'differs' if len(kept) == 1 else 'differ'}: {', '.join(kept) or 'none'}.")
    return line


def _claim_verdict(d: Any, above: str, below: str, claimed: str) -> str:
    """A paper's claim read off the paired difference ``d``: "no difference detected with N seeds" while the
    interval contains 0, else the side it lies on (``above`` or ``below``, e.g. "higher", "tighter") and
    whether that is the side the paper claims (``claimed``: "above" or "below")."""
    kind = verdict_kind(d)
    if kind not in ("better", "worse"):
        return verdict(d) if kind == "single_run" else f"no difference detected with {d.n} seeds"
    side = "above" if kind == "better" else "below"
    return f"{above if side == 'above' else below}, the claim {'holds' if side == claimed else 'does not hold'}"


def seeded_claims(recipes: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """The papers' claims on the seeded table, each as a paired difference over common seeds."""
    out = []

    def pair(a: str, b: str, value: Any) -> Any:
        if a not in recipes or b not in recipes:
            return None
        return next((d for x, y, d in paired_rows({a: recipes[a], b: recipes[b]}, value) if (x, y) == (a, b)), None)

    def show(d: Any, above: str, below: str, claimed: str) -> str:
        """``d`` with its interval, then what it says of the claim: the claim holds when the interval lies on
        the side the paper claims (``claimed``: "above" or "below" 0), does not hold on the other side."""
        head = f"{100 * d.mean:+.2f} points over {d.n} seeds, 95 % interval [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
        return head + ": " + _claim_verdict(d, above, below, claimed)

    d = pair("adn", "plain_full", lambda r: _top1(r, "F"))
    out.append("- **ADN Table 1** (super-net >= the individually trained full-depth net), ADN super-net minus plain "
               "full-depth top-1: " + (show(d, "higher", "lower", "above") if d else
                                       "needs adn and plain_full at two common seeds") + ".")
    d = pair("gated_depth", "adn", lambda r: sample_std([c["top1"] for c in _fixed(r).values()]))
    out.append("- **Gated Depth Sec. 6.2** (its sub-networks' top-1 spread is tighter than ADN's), std of top-1 over "
               "all patterns, gated_depth minus adn: " + (show(d, "wider", "tighter", "below") if d else
                                                          "needs adn and gated_depth at two common seeds") + ".")
    d = pair("probgates_per_batch", "probgates_per_gate", lambda r: _strategies(r)[HALF]["top1"] if HALF in _strategies(r) else float("nan"))
    act = pair("probgates_per_batch", "probgates_per_gate", lambda r: _activation(_strategies(r)[HALF]) if HALF in _strategies(r) else float("nan"))
    out.append("- **Probabilistic gates Sec. 4** (per-batch better in accuracy and activation), at threshold 0.5, "
               "per-batch minus per-gate: top-1 " + (show(d, "higher", "lower", "above") if d else
                                                     "needs both probgates runs at two common seeds")
               + ("; activation " + f"{act.mean:+.3f} [{act.low:+.3f}, {act.high:+.3f}]: "
                  + _claim_verdict(act, "higher", "lower", "below") if act else "") + ".")
    return out


def pick_within(rec: dict[str, Any], budget: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fixed pattern a deployer with ``budget`` (a share of the super-net's MACs) would take: the best
    validation top-1 among the patterns that cost no more (ties: the cheaper, then the pattern's name), with its
    row on the test split, where it is scored (picking on test would overstate it)."""
    fits = [c for c in rec["val"]["candidates"] if c["strategy"] == "pattern" and c["cost"] <= budget + 1e-9]
    pick = max(fits, key=lambda c: (c["top1"], -c["cost"], c["pattern"]))
    return pick, _fixed(rec)[pick["pattern"]]


def budget_table(recipes: dict[str, dict[int, dict[str, Any]]], budget: float = 0.5) -> list[str]:
    """Per recipe, the pattern picked on validation within ``budget`` of the MACs (``pick_within``) at each seed,
    and its test top-1 as mean ± sample std with the 95 % t-interval over seeds."""
    lines = [f"| recipe | seeds | pattern picked on validation within {budget:g} of the MACs (per seed) | share of the "
             "MACs (mean) | test top-1 (%) | 95 % interval |", "|---|---|---|---|---|---|"]
    for recipe, seeds in recipes.items():
        picks = [pick_within(seeds[i], budget) for i in sorted(seeds)]
        top1 = [test["top1"] for _, test in picks]
        iv = t_interval(top1)
        span = f"[{100 * iv.low:.2f}, {100 * iv.high:.2f}]" if iv.n > 1 else "one seed: no interval"
        patterns = ", ".join(f"`{val['pattern']}`" for val, _ in picks)
        lines.append(f"| {recipe} | {', '.join(map(str, sorted(seeds)))} | {patterns} | "
                     f"{sum(test['cost'] for _, test in picks) / len(picks):.3f} | {_mean_sd(top1)} | {span} |")
    return lines


def seeded_plot(recipes: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Per recipe the frontier (top-1 vs MACs) of the candidates' mean test top-1 over seeds, with the std over
    seeds as error bars at the frontier points, and each seed's own frontier thin."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe, seeds in recipes.items():
        runs = [seeds[i] for i in sorted(seeds)]
        keys = set.intersection(*[{(c["pattern"], c["strategy"]) for c in r["test"]["candidates"] if c["cost"] <= 1 + 1e-9}
                                   for r in runs])
        rows = {k: [next(c for c in r["test"]["candidates"] if (c["pattern"], c["strategy"]) == k) for r in runs]
                for k in keys}
        macs = {k: sum(c["macs"] for c in v) / len(v) / 1e6 for k, v in rows.items()}
        mean = {k: 100 * sum(c["top1"] for c in v) / len(v) for k, v in rows.items()}
        sd = {k: 100 * sample_std([c["top1"] for c in v]) for k, v in rows.items()}
        order = list(rows)
        mask = pareto_mask([macs[k] for k in order], [mean[k] for k in order])
        front = sorted((k for k, m in zip(order, mask) if m), key=lambda k: macs[k])
        line = ax.step([macs[k] for k in front], [mean[k] for k in front], where="post", label=f"{recipe} (n={len(runs)})")
        ax.errorbar([macs[k] for k in front], [mean[k] for k in front], yerr=[sd[k] for k in front], fmt="o", ms=3,
                    color=line[0].get_color(), capsize=2)
    _label(ax, "MMACs per image", "test top-1 (%), mean over seeds",
           "CIFAR-10, ResNet-20, a gate on every block: frontier of the mean over seeds (bars: std)")
    _save(fig, path)


def render_seeded(table: str, folder: Path, doc: Path, runs: dict[str, dict[str, Any]]) -> str:
    recipes = by_recipe(runs)
    begin, end = f"<!-- results:{table}:begin -->", f"<!-- results:{table}:end -->"
    first = next(iter(runs.values()))
    seeded_plot(recipes, folder / "frontier.png")
    body = [f"Rendered by `python benchmarks/render_results.py --table {table}` from `docs/results/{table}/*.json` "
            f"({len(runs)} runs finished: {', '.join(f'{k} x{len(v)}' for k, v in recipes.items())}; {first['epochs']} "
            f"epochs, {first['n_units']} units, test set {first['test']['candidates'][0]['n']} images; seed index i sets "
            "`train.seed` and `data.split_seed`). Test top-1 (%) as mean ± sample std over seeds, along the ladder "
            "(`T` = unit skipped), and the frontier score with its 95 % Student-t interval over seeds:", "",
            *seeded_candidate_table(recipes), "",
            "The ladder skips units from the last one backwards; a deployer with a budget takes the best pattern that "
            "fits it. Here, the fixed pattern with the best validation top-1 among those at no more than half the "
            "super-net's MACs, scored on test:", "", *budget_table(recipes), "",
            "Paired differences between recipes (same seed indices; 95 % Student-t interval; `gatesearch.stats`):", "",
            *paired_table(recipes), "", "What the papers claim, at this budget, with paired intervals (the probabilistic "
            "gates' claim on that paper's own layout; ADN's and Gated Depth's on a layout outside theirs, which keep a "
            "mandatory sub-path per stage: DESIGN_NOTES 47):", "",
            *seeded_claims(recipes), "", f"![frontiers](results/{table}/frontier.png)"]
    return write_section(doc, begin, end, body)


def render(table: str, results_root: Path, doc: Path) -> str:
    folder = results_root / table
    every = load_runs(folder)
    if any("seed_index" in r for r in every.values()):
        return render_seeded(table, folder, doc, every)
    runs = {k: v for k, v in every.items() if k in ORDER}
    diag = {k: v for k, v in every.items() if k not in ORDER}
    begin, end = f"<!-- results:{table}:begin -->", f"<!-- results:{table}:end -->"
    if not runs:
        body = [f"No finished run in `{folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}` yet."]
    else:
        png = folder / "frontier.png"
        plot(runs, png)
        first = next(iter(runs.values()))
        body = [f"Rendered by `python benchmarks/render_results.py --table {table}` from "
                f"`docs/results/{table}/*.json` ({len(runs)} of {len(ORDER)} runs finished; {first['epochs']} epochs, "
                f"test set {first['test']['candidates'][0]['n']} images). Test top-1 (%) per pattern "
                "(`T` = unit skipped; * = the calibrated full network):", "", *pattern_table(runs), ""]
        strat = strategy_table(runs)
        if strat:
            body += ["Probabilistic gates' inference strategies (test; threshold 0.5 of the sweep):", "", *strat, ""]
        if sweep_plot(runs, folder / "probgates_sweep.png"):
            body += [f"![threshold sweep](results/{table}/probgates_sweep.png)", ""]
        body += ["What the papers claim, at this budget:", "", *claims(runs, diag), "",
                 f"![frontiers](results/{table}/frontier.png)"]
        checks = diagnostics_table(diag, runs.get("plain_full"))
        if checks:
            body += ["", "Loop checks behind the sanity bar (`reproduce_cifar.py --run <name>`, run only when named; "
                     "not part of the table above):", "", *checks]
    return write_section(doc, begin, end, body)


def write_section(doc: Path, begin: str, end: str, body: list[str]) -> str:
    """Replace the lines between the markers ``begin`` and ``end`` of ``doc`` by ``body`` (appended,
    markers included, when the markers are absent); returns the section."""
    section = "\n".join([begin, *body, end])
    text = doc.read_text() if doc.is_file() else "# Results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
    return section


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default="cifar10_resnet20")
    p.add_argument("--results-root", default=str(ROOT / "docs" / "results"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    args = p.parse_args()
    print(render(args.table, Path(args.results_root), Path(args.doc)))


if __name__ == "__main__":
    main()
