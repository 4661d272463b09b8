"""Menu figures (matplotlib, Agg backend): Pareto front per device, the distribution of top-1
over all patterns (mean +- std, as the Gated Depth paper reports it), and per-unit gate
activation rates of probgates strategies (a collapsed gate shows as a bar at 0 or 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from gatesearch.selection.pareto import Menu  # noqa: E402


def pareto_figure(menus: Sequence[Menu]) -> Figure:
    """One panel per device: every candidate, the Pareto front as a step line (top-1 vs latency_ms)."""
    fig, axes = plt.subplots(1, len(menus), figsize=(4.5 * len(menus), 3.6), squeeze=False)
    for ax, menu in zip(axes[0], menus):
        pat = [e for e in menu.entries if e["strategy"] == "pattern"]
        strat = [e for e in menu.entries if e["strategy"] != "pattern"]
        ax.scatter([e["latency_ms"] for e in pat], [e["top1"] for e in pat], s=12, c="0.6", label="patterns")
        if strat:
            ax.scatter([e["latency_ms"] for e in strat], [e["top1"] for e in strat], s=18, marker="^", c="tab:orange",
                       label="gate strategies")
        front = sorted((e["latency_ms"], e["top1"], e["pattern"]) for e in menu.entries if e["pareto"])
        if front:
            ax.step([x for x, _, _ in front], [y for _, y, _ in front], where="post", c="tab:blue", label="Pareto front")
            for x, y, label in front:  # name the operating points a user would pick
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, family="monospace")
        lat = [e["latency_ms"] for e in menu.entries if e["latency_ms"] > 0]
        if lat and max(lat) > 5 * min(lat):  # multi-pass strategies (ensemble) would squash the patterns
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{menu.device} (frontier score {menu.frontier_score:.3f}, {menu.latency_source})", fontsize=9)
        ax.set_xlabel(f"latency (ms, batch {menu.batch})")
        ax.set_ylabel("top-1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def top1_distribution_figure(menu: Menu) -> Figure:
    """Histogram of top-1 over the fixed patterns, with mean and +-1 std marked."""
    accs = [e["top1"] for e in menu.entries if e["strategy"] == "pattern"]
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.hist(accs, bins=min(30, max(5, len(accs) // 2)), color="tab:blue", alpha=0.8)
    ax.axvline(menu.top1_mean, c="k", label=f"mean {menu.top1_mean:.4f}")
    for s in (-1, 1):
        ax.axvline(menu.top1_mean + s * menu.top1_std, c="k", ls="--")
    ax.set_title(f"{menu.model}: top-1 over {len(accs)} patterns (std {menu.top1_std:.4f})", fontsize=9)
    ax.set_xlabel("top-1")
    ax.set_ylabel("patterns")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gate_rates_figure(menu: Menu) -> Figure | None:
    """Heat map of each probgates strategy's per-unit activation rate (rows: strategies, columns:
    units); None when the menu has none. A unit stuck at 0 or 1 in every row is a collapsed gate."""
    strat = [e for e in menu.entries if e["strategy"] != "pattern"]
    if not strat:
        return None
    rates = [e["unit_rates"] for e in strat]
    n = len(rates[0])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * n + 2.5), 0.28 * len(strat) + 1.4))
    im = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    if n * len(strat) <= 400:
        for i, row in enumerate(rates):
            for u, r in enumerate(row):
                ax.text(u, i, f"{r:.2f}", ha="center", va="center", fontsize=6, c="w" if r < 0.6 else "k")
    ax.set_xticks(range(n), [str(u) for u in range(n)])
    ax.set_yticks(range(len(strat)), [e["strategy"] for e in strat], fontsize=7)
    ax.set_xlabel("unit")
    ax.set_title("gate activation rate per unit (a column all 0 or all 1 = collapsed gate)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def save_figures(menus: Sequence[Menu], out_dir: str | Path) -> dict[str, Path]:
    """Write the figures as PNGs under ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = {"pareto.png": pareto_figure(menus), "top1_distribution.png": top1_distribution_figure(menus[0])}
    rates = gate_rates_figure(menus[0])
    if rates is not None:
        figs["gate_rates.png"] = rates
    paths = {}
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths[name] = out / name
    return paths
