"""The select pipeline: checkpoint -> scores on the validation split -> costs -> one menu per device.

Costs per candidate: MACs and active params (``gatesearch.cost``, batch 1), bytes moved and
latency at ``batch`` per device. Latency comes from a LUT measured on the device when one
covers the pattern, else from a measurement on this host (``host`` device, up to
``MEASURE_MAX_PATTERNS`` patterns), else from the LUT's base-net + per-unit rows (additive),
else from the roofline model. Probgates strategies get
*expected* costs: base-net + sum_u rate_u * (cost of unit u), times the forward passes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from gatesearch.checkpoint import load_checkpoint
from gatesearch.config import with_overrides
from gatesearch.cost import count_macs, count_params
from gatesearch.data import build_data, eval_loader
from gatesearch.devices.lut import LutRow, check_lut, lut_compose, lut_lookup, read_lut
from gatesearch.devices.profiles import DEVICES, DeviceProfile, get_device
from gatesearch.devices.roofline import Layer, bytes_moved, predict_ms, trace_layers
from gatesearch.devices.timing import measure_ms
from gatesearch.errors import UserError
from gatesearch.evaluate import EXHAUSTIVE_MAX_UNITS, candidate_table, frontier_of, metric_name
from gatesearch.evaluate.walk import PatternScore
from gatesearch.models import GatedResNet
from gatesearch.patterns import SkipPattern
from gatesearch.selection.pareto import Menu, build_menu, write_menu
from gatesearch.selection.plots import save_figures
from gatesearch.stats import wilson_interval
from gatesearch.tracking import find_run_checkpoint, log_selection
from gatesearch.train import autocast, autocast_dtype, restore_method

MEASURE_MAX_PATTERNS = 64


@dataclass(frozen=True)
class ScoreResult:
    """A candidate table with how it was searched and how BN was set, the input of ``device_menu``."""

    scores: list[PatternScore]
    search: str  # "exhaustive" | "beam(width=W)"
    bn_mode: str  # "switchable" | "plain" | "reestimated"
    extras: dict = field(default_factory=dict)


@dataclass
class PatternCosts:
    """Device-independent costs (batch 1) and per-pattern layer traces (at ``batch``), cached."""

    model: GatedResNet
    input_shape: tuple[int, int, int]  # (C, H, W)
    batch: int
    macs: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    layers: dict[str, list[Layer]] = field(default_factory=dict)

    def of(self, pattern: str) -> tuple[int, int]:
        if pattern not in self.macs:
            p = SkipPattern.parse(pattern, self.model.n_units)
            one = (1, *self.input_shape)
            self.macs[pattern] = count_macs(self.model, p, one)
            self.params[pattern] = count_params(self.model, p, one)
        return self.macs[pattern], self.params[pattern]

    def trace(self, pattern: str) -> list[Layer]:
        if pattern not in self.layers:
            p = SkipPattern.parse(pattern, self.model.n_units)
            self.layers[pattern] = trace_layers(self.model, p, (self.batch, *self.input_shape))
        return self.layers[pattern]


def is_fixed(strategy: str) -> bool:
    """A fixed sub-network (a pattern as it is, or the calibrated full network), not a gate strategy."""
    return strategy in ("pattern", "calibrated")


def _unit_patterns(n: int) -> tuple[str, str, list[str]]:
    """Super-net, base-net and 'only unit u skipped' patterns: what expected costs are built from."""
    sup = "F" * n
    return sup, "T" * n, [sup[:u] + "T" + sup[u + 1:] for u in range(n)]


def _expected(value: Callable[[str], float], rates: Sequence[float], n: int) -> float:
    sup, base, singles = _unit_patterns(n)
    return value(base) + sum(r * (value(sup) - value(s)) for r, s in zip(rates, singles))


def _lut_for(rows: Sequence[LutRow] | None, profile: DeviceProfile, devices: Sequence[str]) -> Sequence[LutRow]:
    """LUT rows apply to the device they name, or to the only device asked for."""
    if not rows:
        return []
    names = {r.device for r in rows}
    if profile.name in names or any(a in names for a in profile.aliases):
        return [r for r in rows if r.device in (profile.name, *profile.aliases)]
    if len(devices) == 1:
        return list(rows)
    return []


def device_menu(
    scores: ScoreResult, costs: PatternCosts, device: str, *, lut: Sequence[LutRow] | None = None,
    devices: Sequence[str] = (), measure_runs: int = 20, meta: dict | None = None,
    seed_spread: dict[str, dict[str, Any]] | None = None,
) -> Menu:
    """One menu: every scored candidate with MACs, params, bytes and latency on ``device``; each top-1 with
    its Wilson interval over the images scored, and ``seed_spread`` (``metric_name`` -> ``{"std", "n"}``,
    from ``study.reeval``) as its std over seeds."""
    profile = get_device(device)
    model, n = costs.model, costs.model.n_units
    lut_rows = _lut_for(lut, profile, devices or [device])
    lut_map = lut_lookup(lut_rows, n, costs.batch)
    latency: dict[str, tuple[float, float, str]] = {p: (r.median_ms, r.p90_ms, "lut") for p, r in lut_map.items()}
    needed = {s.pattern for s in scores.scores if is_fixed(s.strategy)}
    if any(not is_fixed(s.strategy) for s in scores.scores):
        sup, base, singles = _unit_patterns(n)
        needed |= {sup, base, *singles}
    todo = sorted(needed - set(latency))
    if profile.name == "host" and todo and len(todo) <= MEASURE_MAX_PATTERNS:
        shape = (costs.batch, *costs.input_shape)
        gates = [SkipPattern.parse(p, n) for p in todo]
        for p, (med, p90) in zip(todo, measure_ms(model, gates, shape, warmup=3, runs=measure_runs)):
            latency[p] = (med, p90, "measured")

    def lat(p: str) -> tuple[float, float, str]:
        if p not in latency:
            composed = lut_compose(lut_rows, p, costs.batch) if lut_rows else None
            if composed is not None:
                latency[p] = (*composed, "lut")
            else:
                ms = predict_ms(costs.trace(p), profile)
                latency[p] = (ms, ms, "model")
        return latency[p]

    def nbytes(p: str) -> int:
        return bytes_moved(costs.trace(p), profile.bytes_per_element)

    entries = [_entry(s, costs, lat, nbytes, n, seed_spread) for s in scores.scores]
    return build_menu(entries, device=profile.name, bn_mode=scores.bn_mode, search=scores.search,
                      batch=costs.batch, **(meta or {}))


def _entry(s: PatternScore, costs: PatternCosts, lat: Callable, nbytes: Callable, n: int,
           spread: dict[str, dict[str, Any]] | None = None) -> dict:
    low, high = wilson_interval(s.correct1, s.n) if s.n > 0 else (None, None)
    seeds = (spread or {}).get(metric_name(s))  # this candidate's test top-1 over re-evaluation seeds
    e = {"pattern": s.pattern, "strategy": s.strategy, "top1": s.top1, "top1_low": low, "top1_high": high,
         "n_eval": s.n, "top1_seed_std": seeds["std"] if seeds else None, "n_seeds": seeds["n"] if seeds else 0,
         "top5": s.top5, "top1_std": s.top1_std, "unit_rates": list(s.unit_rates),
         "activation": sum(s.unit_rates) / n if n else 1.0}
    if is_fixed(s.strategy):
        macs, params = costs.of(s.pattern)
        med, p90, src = lat(s.pattern)
        return {**e, "macs": macs, "params": params, "bytes": nbytes(s.pattern), "latency_ms": med,
                "latency_p90_ms": p90, "latency_source": src}
    rates, k = s.unit_rates, s.passes
    heads = sum(p.numel() for p in costs.model.gate_parameters())
    sup = "F" * n
    return {**e, "macs": int(k * _expected(lambda p: costs.of(p)[0], rates, n)),
            "params": costs.of(sup)[1] + heads, "bytes": int(k * _expected(nbytes, rates, n)),
            "latency_ms": k * _expected(lambda p: lat(p)[0], rates, n),
            "latency_p90_ms": k * _expected(lambda p: lat(p)[1], rates, n), "latency_source": lat(sup)[2]}


class Progress:
    """A loader that shows a tqdm bar (stderr) for every pass over it: scoring walks the validation
    data once for the patterns and again for each probgates strategy."""

    def __init__(self, loader: Iterable, desc: str) -> None:
        self.loader, self.desc, self.passes = loader, desc, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        from tqdm import tqdm  # lazy: only an interactive terminal gets a bar

        self.passes += 1
        yield from tqdm(self.loader, desc=f"{self.desc}, pass {self.passes}", file=sys.stderr, leave=False)


def validate_devices(devices: Sequence[str]) -> list[str]:
    """Resolve names early so an unknown device fails before minutes of scoring."""
    for d in devices:
        if d not in DEVICES:
            raise UserError(f"unknown device {d!r}; known: {', '.join(DEVICES.names())}")
    return list(devices)


def torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class SelectOptions:
    devices: tuple[str, ...]
    out: str
    checkpoint: str | None = None
    run: str | None = None
    tracking_uri: str = "sqlite:///mlflow.db"
    budget_ms: float | None = None
    lut: str | None = None
    data_root: str | None = None
    reestimate_bn: int | None = None  # BN re-estimation batches; None: as the checkpoint was trained
    batch: int = 1
    torch_device: str = "cpu"
    beam_width: int = 8
    threads: int = 1  # torch CPU threads (host timings and the host profile use the same count)
    lut_any_device: bool = False  # use a LUT whose device column names none of ``devices``
    # a re-evaluated config's test top-1 spread per candidate (``metric_name`` -> {"std", "n", ...}; study.reeval)
    seed_spread: dict[str, dict[str, Any]] | None = None


def run_select(o: SelectOptions) -> tuple[list[Menu], dict[str, Path]]:
    """Score a checkpoint's candidates on its validation split and write one menu per device
    under ``o.out/<device>/``, figures under ``o.out``; log to the MLflow run when ``o.run``."""
    devices = validate_devices(o.devices)
    if o.threads > 0:
        torch.set_num_threads(o.threads)
    if o.checkpoint is None and o.run is None:
        raise UserError("give --checkpoint PATH or --run MLFLOW_RUN_ID")
    rows = read_lut(o.lut) if o.lut else None
    if rows and not any(_lut_for(rows, get_device(d), devices if o.lut_any_device else ()) for d in devices):
        names = ", ".join(sorted({r.device for r in rows}))
        hint = "pass --lut-any-device to use it anyway" if len(devices) == 1 else "name one --device"
        raise UserError(f"--lut {o.lut} was measured on {names}, none of the requested devices "
                        f"({', '.join(devices)}); {hint}, or profile with --device-name")
    out = Path(o.out)
    path = Path(o.checkpoint) if o.checkpoint else _run_checkpoint(o, out)
    dev = torch_device(o.torch_device)
    ck = load_checkpoint(path, map_location=dev)
    if rows:
        check_lut(rows, ck.model.n_units)  # before any scoring
    cfg = with_overrides(ck.config, {"data.root": o.data_root}) if o.data_root else ck.config
    # the data path and precision training evaluated with (data.on_device, train.amp_eval): the same numbers
    data = build_data(cfg.data, cfg.train.seed, dev)
    precision = autocast_dtype(dev, cfg.train.amp) if cfg.train.amp_eval else None
    split = "val" if data.val is not None else "test"
    if cfg.train.channels_last:  # the memory layout training evaluated in: the same numbers, bit for bit
        ck.model.to(memory_format=torch.channels_last)
    method = restore_method(cfg, ck.model, data, ck.method_state)
    n_bn = cfg.train.bn_reestimate_batches if o.reestimate_bn is None else o.reestimate_bn
    with autocast(dev, precision):
        table = candidate_table(ck.model, method, Progress(eval_loader(data), f"scoring on {split}"), dev,
                                input_shape=tuple(ck.input_shape), bn_loader=data.train, bn_batches=n_bn,
                                seed=cfg.train.seed, beam_width=o.beam_width, cost=cfg.train.score_cost)
    n = ck.model.n_units
    search = "exhaustive" if n <= EXHAUSTIVE_MAX_UNITS else f"beam(width={o.beam_width})"
    bn_mode = "reestimated" if n_bn > 0 else "switchable" if ck.model.switchable_bn else "plain"
    scores = ScoreResult(table, search, bn_mode)
    costs = PatternCosts(ck.model, tuple(ck.input_shape), o.batch)
    meta = {"model": cfg.model.name, "dataset": cfg.data.name, "checkpoint": str(path),
            "extras": {"method": cfg.method.name, "run_id": o.run, "split": split, "input_shape": list(ck.input_shape),
                       "score_cost": cfg.train.score_cost, "frontier_score_on_score_cost": frontier_of(table),
                       "torch": torch.__version__, "threads": torch.get_num_threads()}}
    menus = [device_menu(scores, costs, d, lut=rows, devices=devices, meta=meta, seed_spread=o.seed_spread)
             for d in devices]
    files: dict[str, Path] = {}
    for menu in menus:
        j, p = write_menu(menu, out / menu.device)
        files[f"{menu.device}/menu.json"], files[f"{menu.device}/menu.parquet"] = j, p
    files.update(save_figures(menus, out))
    if o.run:
        log_selection(o.tracking_uri, o.run, menus, out)
    return menus, files


def _run_checkpoint(o: SelectOptions, out: Path) -> Path:
    return find_run_checkpoint(o.tracking_uri, o.run, out / "checkpoint")
