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
        front = sorted((e["latency_ms"], e["top1"]) for e in menu.entries if e["pareto"])
        if front:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", c="tab:blue", label="Pareto front")
        ax.set_title(f"{menu.device} (HV {menu.hypervolume:.3f}, {menu.latency_source})", fontsize=9)
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
    """Per-unit activation rate of each probgates strategy; None when the menu has none."""
    strat = [e for e in menu.entries if e["strategy"] != "pattern"]
    if not strat:
        return None
    n = len(strat[0]["unit_rates"])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * n + 2), 3.4))
    width = 0.8 / len(strat)
    for i, e in enumerate(strat):
        ax.bar([u + i * width for u in range(n)], e["unit_rates"], width=width, label=e["strategy"])
    ax.set_xticks([u + 0.4 - width / 2 for u in range(n)], [str(u) for u in range(n)])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("unit")
    ax.set_ylabel("activation rate")
    ax.set_title("gate activation per unit (0 or 1 everywhere = collapsed)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
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
