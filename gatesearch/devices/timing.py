"""Latency measured on this host (``latency_source: measured``): warm-up, several interleaved runs,
median and p90; per pattern, per unit alone, and the rows of a lookup table (``gatesearch profile``)."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from torch import nn

from gatesearch.devices.lut import LutRow
from gatesearch.errors import UserError
from gatesearch.models import GatedResNet, Gates
from gatesearch.patterns import all_patterns


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_ms(
    model: nn.Module, gates_list: Sequence[Gates], input_shape: tuple[int, ...], warmup: int = 3, runs: int = 10
) -> list[tuple[float, float]]:
    """(median_ms, p90_ms) per entry of ``gates_list``. Runs are interleaved across entries so
    load from other processes spreads evenly instead of biasing whichever pattern ran then."""
    model.eval()
    p = next(model.parameters())
    x = torch.randn(input_shape, device=p.device, dtype=p.dtype)
    for g in gates_list:
        for _ in range(warmup):
            model(x, g)
    times: list[list[float]] = [[] for _ in gates_list]
    for _ in range(runs):
        for i, g in enumerate(gates_list):
            _sync(p.device)
            t0 = time.perf_counter()
            model(x, g)
            _sync(p.device)
            times[i].append(1e3 * (time.perf_counter() - t0))
    return [(statistics.median(t), _p90(t)) for t in times]


def _p90(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


@torch.no_grad()
def measure_unit_ms(model: GatedResNet, input_shape: tuple[int, ...], warmup: int = 3, runs: int = 10) -> list[tuple[float, float]]:
    """(median_ms, p90_ms) of each unit's blocks alone, on the input they get in the super-net."""
    model.eval()
    firsts = [unit[0] for stage in model.stages for unit in stage.units]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].clone())) for i, b in enumerate(firsts)]
    p = next(model.parameters())
    try:
        model(torch.randn(input_shape, device=p.device, dtype=p.dtype), None)
    finally:
        for h in hooks:
            h.remove()
    units = [unit for stage in model.stages for unit in stage.units]
    times: list[list[float]] = [[] for _ in units]
    for r in range(warmup + runs):
        for i, unit in enumerate(units):
            h = inputs[i]
            _sync(p.device)
            t0 = time.perf_counter()
            for block in unit:
                h = block(h)
            _sync(p.device)
            if r >= warmup:
                times[i].append(1e3 * (time.perf_counter() - t0))
    return [(statistics.median(t), _p90(t)) for t in times]


def profile_rows(model: GatedResNet, input_shape: tuple[int, int, int], batch: int, runs: int, warmup: int,
                 device_name: str) -> list[LutRow]:
    """LUT rows for every pattern (interleaved runs) and every unit alone (``unit:<i>``) at ``batch``."""
    if model.n_units > 12:
        raise UserError(f"profiling every pattern of {model.n_units} units (2^{model.n_units}) is too many; max 12")
    shape = (batch, *input_shape)
    patterns = all_patterns(model.n_units)
    rows = [LutRow(str(p), batch, med, p90, runs, device_name)
            for p, (med, p90) in zip(patterns, measure_ms(model, patterns, shape, warmup, runs))]
    rows += [LutRow(f"unit:{u}", batch, med, p90, runs, device_name)
             for u, (med, p90) in enumerate(measure_unit_ms(model, shape, warmup, runs))]
    return rows
