"""Device menus: for one trained model and one device, every scored candidate with the Pareto set
(top-1 vs latency) flagged and the menu's frontier score, written as JSON and Parquet with the same
entry columns (the Parquet file keeps the menu-level fields -- model, device, frontier_score, ... --
in its schema metadata). The Pareto mask and the frontier score are ``evaluate.frontier``'s, the ones
training and the search objective use.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gatesearch.evaluate.frontier import frontier_score, pareto_mask
from gatesearch.preflight import atomic_target
from gatesearch.stats import sample_std

#: Entry columns, in order. ``latency_ms`` is at ``batch`` (menu field); ``bytes`` are weights +
#: activations moved at the device's precision; ``activation`` the mean fraction of units run;
#: ``unit_rates`` per unit; ``top1_std`` over stochastic runs (0 for deterministic candidates);
#: ``top1_low`` / ``top1_high`` the 95 % Wilson interval of ``top1`` over the ``n_eval`` images it was
#: scored on (the evaluation split's sampling error); ``top1_seed_std`` the sample std of the candidate's
#: test top-1 over ``n_seeds`` re-evaluation seeds of its config (``study.reeval``; null and 0 otherwise).
MENU_COLUMNS = ("pattern", "strategy", "top1", "top1_low", "top1_high", "n_eval", "top1_seed_std", "n_seeds", "top5",
                "top1_std", "macs", "params", "bytes", "latency_ms", "latency_p90_ms", "latency_source", "activation",
                "unit_rates", "pareto")
_META_KEY = b"gatesearch.menu"


@dataclass
class Menu:
    model: str
    dataset: str
    device: str
    checkpoint: str
    bn_mode: str  # switchable | plain | reestimated
    latency_source: str  # measured | lut | model | mixed
    search: str  # exhaustive | beam(width=W)
    batch: int
    entries: list[dict[str, Any]]
    frontier_score: float = 0.0  # on this device's latency axis (relative to the super-net's latency)
    top1_mean: float = 0.0  # over fixed patterns (the Gated Depth paper's distribution)
    top1_std: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("entries")
        return d


def build_menu(entries: list[dict[str, Any]], **fields: Any) -> Menu:
    """Flag the Pareto set (top-1 vs latency) and compute the frontier score with latency
    normalised by the super-net's (the all-``F`` pattern; the slowest entry when absent)."""
    rows = [{c: e.get(c) for c in MENU_COLUMNS} for e in entries]
    lat = [float(r["latency_ms"]) for r in rows]
    acc = [float(r["top1"]) for r in rows]
    for r, flag in zip(rows, pareto_mask(lat, acc)):
        r["pareto"] = bool(flag)
    fixed_kinds = ("pattern", "calibrated")  # fixed sub-networks (the calibrated full network is one)
    ref = next((float(r["latency_ms"]) for r in rows if r["strategy"] in fixed_kinds and set(r["pattern"]) <= {"F"}),
               max(lat, default=1.0))
    score = frontier_score([v / ref for v in lat], acc) if rows else 0.0
    fixed = [float(r["top1"]) for r in rows if r["strategy"] in fixed_kinds]
    mean = sum(fixed) / len(fixed) if fixed else 0.0
    std = sample_std(fixed)
    sources = {r["latency_source"] for r in rows}
    fields.setdefault("latency_source", sources.pop() if len(sources) == 1 else "mixed")
    return Menu(entries=rows, frontier_score=score, top1_mean=mean, top1_std=std, **fields)


def pick(menu: Menu, budget_ms: float) -> dict[str, Any] | None:
    """The most accurate entry whose ``latency_ms`` fits ``budget_ms`` (ties: the faster); None if none fits."""
    fits = [e for e in menu.entries if e["latency_ms"] <= budget_ms]
    return max(fits, key=lambda e: (e["top1"], -e["latency_ms"])) if fits else None


def write_menu(menu: Menu, out_dir: str | Path, stem: str = "menu") -> tuple[Path, Path]:
    """``<out_dir>/<stem>.json`` (the record) and ``<stem>.parquet`` (same columns), via pyarrow."""
    import pyarrow as pa  # lazy: pyarrow loads only when a menu is written or read
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = out / f"{stem}.json", out / f"{stem}.parquet"
    record = {**menu.meta(), "entries": menu.entries}
    text = json.dumps(record, indent=1, allow_nan=False)  # before anything is written: NaN raises here
    table = pa.table({c: [e[c] for e in menu.entries] for c in MENU_COLUMNS}, schema=_schema(pa))
    table = table.replace_schema_metadata({_META_KEY: json.dumps(menu.meta()).encode()})
    tmp_j, tmp_p = atomic_target(jpath), atomic_target(ppath)  # both files complete, or neither replaced
    try:
        tmp_j.write_text(text)
        pq.write_table(table, tmp_p)
        os.replace(tmp_j, jpath)
        os.replace(tmp_p, ppath)
    finally:
        tmp_j.unlink(missing_ok=True)
        tmp_p.unlink(missing_ok=True)
    return jpath, ppath


def _schema(pa: Any) -> Any:
    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    types = {"pattern": s, "strategy": s, "top1": f64, "top1_low": f64, "top1_high": f64, "n_eval": i64,
             "top1_seed_std": f64, "n_seeds": i64, "top5": f64, "top1_std": f64, "macs": i64, "params": i64,
             "bytes": i64, "latency_ms": f64, "latency_p90_ms": f64, "latency_source": s, "activation": f64,
             "unit_rates": pa.list_(f64), "pareto": pa.bool_()}
    return pa.schema([(c, types[c]) for c in MENU_COLUMNS])


def read_menu(path: str | Path) -> Menu:
    """Read a menu back from its ``.json`` or ``.parquet`` file."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: as in write_menu

        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[_META_KEY])
        return Menu(entries=table.to_pylist(), **meta)
    record = json.loads(path.read_text())
    entries = record.pop("entries")
    return Menu(entries=entries, **record)


def format_menu(menu: Menu, limit: int | None = 40, budget_ms: float | None = None) -> str:
    """A terminal table: Pareto entries first (fastest first), then the rest; * marks the Pareto set."""
    order = sorted(menu.entries, key=lambda e: (not e["pareto"], e["latency_ms"]))
    chosen = pick(menu, budget_ms) if budget_ms is not None else None
    lines = [f"{menu.model} on {menu.dataset} -> {menu.device}  (bn={menu.bn_mode}, latency={menu.latency_source}, "
             f"batch={menu.batch}, search={menu.search}, frontier score={menu.frontier_score:.4f}, "
             f"top-1 over patterns {menu.top1_mean:.4f} +- {menu.top1_std:.4f})"]
    w = max([8] + [len(e["pattern"]) for e in order])
    lines.append(f"  {'pattern':<{w}}  {'strategy':<15} {'top1':>7} {'95% CI (split)':>17} {'sd seeds':>10} "
                 f"{'+-runs':>6} {'top5':>7} {'MMACs':>9} {'params(M)':>9} {'lat(ms)':>9} {'src':>8}  act")
    for e in order[:limit]:
        mark = ">" if chosen is e else "*" if e["pareto"] else " "
        lines.append(f"{mark} {e['pattern']:<{w}}  {e['strategy']:<15} {e['top1']:7.4f} {_ci(e):>17} {_seed_sd(e):>10} "
                     f"{e['top1_std']:6.4f} {e['top5']:7.4f} {e['macs'] / 1e6:9.2f} {e['params'] / 1e6:9.3f} "
                     f"{e['latency_ms']:9.4f} {e['latency_source']:>8}  {e['activation']:.2f}")
    if limit is not None and len(order) > limit:
        lines.append(f"  ... {len(order) - limit} more (all in the JSON / Parquet files)")
    lines.append("  entries whose 95% intervals overlap are not shown apart by this split (docs/selection.md)")
    if budget_ms is not None:
        lines.append(f"budget {budget_ms} ms: " + (f"pick {chosen['pattern']} ({chosen['strategy']}), top-1 "
                     f"{chosen['top1']:.4f}, {chosen['latency_ms']:.4f} ms" if chosen else "nothing fits"))
    return "\n".join(lines)


def _ci(e: dict[str, Any]) -> str:
    """``[low, high]`` of an entry's top-1 (menus written before the interval columns show ``-``)."""
    low, high = e.get("top1_low"), e.get("top1_high")
    return "-" if low is None or high is None else f"[{low:.4f},{high:.4f}]"


def _seed_sd(e: dict[str, Any]) -> str:
    sd, n = e.get("top1_seed_std"), e.get("n_seeds") or 0
    return "-" if sd is None or n < 2 else f"{sd:.4f} n={n}"
