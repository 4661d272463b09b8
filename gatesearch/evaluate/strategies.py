"""Probabilistic-gate models (``model.gate_heads``): their *inference strategies* scored (Herrmann
et al., 002_...txt Sec. 3.2 and Fig. 4): threshold tau sweep, always-on, stochastic (mean +- std over
R runs) and ensemble (softmax averaged over R runs), each with its measured per-unit activation rate.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from gatesearch.evaluate.passes import PerBatch
from gatesearch.evaluate.walk import PatternScore, _topk_correct
from gatesearch.models import GatedResNet
from gatesearch.models.gates import gumbel_gate
from gatesearch.parallel import global_batch_index, summed_rows_
from gatesearch.patterns import SkipPattern
from gatesearch.stats import sample_std

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _gate_fn(model: GatedResNet, mode: str, tau: float, gen: torch.Generator | None,
             rates: list[list[float]]) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """A ``GateFn`` deciding each unit from its gate head; appends ``keep [B]`` sums to ``rates``."""

    def fn(u: int, h: torch.Tensor) -> torch.Tensor:
        logits = model.gate_heads[u](h)  # [B, 2], index 1 = keep
        if mode == "threshold":
            keep = (F.softmax(logits, dim=-1)[:, 1] >= tau).to(h.dtype)
        elif mode == "always_on":
            keep = torch.ones(h.shape[0], dtype=h.dtype, device=h.device)
        else:  # stochastic: a hard Gumbel sample is an exact draw from softmax(logits)
            keep, _ = gumbel_gate(logits, tau=1.0, hard=True, generator=gen)
        rates[u][0] += float(keep.sum())
        rates[u][1] += keep.numel()
        return keep

    return fn


def _forward_strategy(model: GatedResNet, x: torch.Tensor, fn: Callable) -> torch.Tensor:
    if not model.switchable_bn:
        return model(x, fn)
    # Switchable BN needs decisions before a stage runs: only data-independent heads (LogitGate)
    # are allowed there (config check), so ask each head on a dummy input of the right batch.
    keep = torch.stack([fn(u, x.new_zeros(x.shape[0], c, 1, 1)) for u, c in enumerate(model.unit_channels)], 1)
    return model(x, keep)


def strategy_source(model: GatedResNet, mode: str, tau: float, seed: int) -> Any:
    """The gates of one strategy as ``forward`` (or ``evaluate.PerBatch``) takes them, for BN
    re-estimation under that strategy: ``threshold`` at ``tau``, ``always_on``, or ``sampled`` (one
    draw per sample and unit from the gate's keep probability, seeded)."""
    sink = [[0.0, 0] for _ in range(model.n_units)]
    gen = None
    if mode == "sampled":
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    fn = _gate_fn(model, "stochastic" if mode == "sampled" else mode, tau, gen, sink)
    if not model.switchable_bn:
        return fn
    return PerBatch(lambda x: torch.stack([fn(u, x.new_zeros(x.shape[0], c, 1, 1))
                                           for u, c in enumerate(model.unit_channels)], 1))


@torch.no_grad()
def score_strategies(
    model: GatedResNet, loader: Iterable, device: torch.device | str = "cpu",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, runs: int = 5, seed: int = 0, always_on: bool = True,
) -> list[PatternScore]:
    """Threshold sweep, always-on, stochastic (mean +- ``sample_std`` of top-1 over ``runs`` draws; 5 as
    002_...txt Fig. 4) and ensemble (softmax averaged over the same draws) for a model with
    ``gate_heads``; ``runs=0`` leaves out the two sampled strategies, ``always_on=False`` that one."""
    if model.gate_heads is None:
        raise ValueError("inference strategies need a model with gate heads (probgates)")
    model.eval()
    n = model.n_units
    modes = [("threshold", t) for t in thresholds] + ([("always_on", 0.0)] if always_on else [])
    det = {m: {"c": [0, 0, 0], "r": [[0.0, 0] for _ in range(n)]} for m in modes}
    sto_c = [[0, 0, 0] for _ in range(runs)]
    ens_c = [0, 0, 0]
    sto_r = [[0.0, 0] for _ in range(n)]
    gen = torch.Generator(device=torch.device(device))
    for j, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        # each batch's draws from its own seed, by its place in the split: a rank scoring its shard
        # of the split (data parallelism) draws for a batch what one process draws for it
        gen.manual_seed(seed * 1_000_003 + global_batch_index(j))
        for m in modes:
            logits = _forward_strategy(model, x, _gate_fn(model, m[0], m[1], None, det[m]["r"]))
            c1, c5 = _topk_correct(logits, y)
            det[m]["c"][0] += c1
            det[m]["c"][1] += c5
            det[m]["c"][2] += y.numel()
        prob_sum = 0.0
        for r in range(runs):
            logits = _forward_strategy(model, x, _gate_fn(model, "stochastic", 0.0, gen, sto_r))
            c1, c5 = _topk_correct(logits, y)
            sto_c[r][0] += c1
            sto_c[r][1] += c5
            sto_c[r][2] += y.numel()
            prob_sum = prob_sum + F.softmax(logits, dim=-1)
        if runs:
            c1, c5 = _topk_correct(prob_sum, y)
            ens_c = [ens_c[0] + c1, ens_c[1] + c5, ens_c[2] + y.numel()]
    # data parallelism: each rank scored its shard of the split
    summed_rows_([d["c"] for d in det.values()] + [r for d in det.values() for r in d["r"]] + sto_c + [ens_c]
                    + sto_r)
    out = []
    for (mode, tau), d in det.items():
        c1, c5, cnt = d["c"]
        rates = tuple(k / max(m, 1) for k, m in d["r"])
        name = f"threshold:{tau:.2f}" if mode == "threshold" else mode
        out.append(PatternScore(_majority(rates), name, c1 / cnt, c5 / cnt, c1, c5, cnt, unit_rates=rates))
    if runs == 0:
        return out
    rates = tuple(k / max(m, 1) for k, m in sto_r)
    accs = [c1 / max(m, 1) for c1, _, m in sto_c]
    std = sample_std(accs)
    c1_mean, c5_mean = (round(sum(c[i] for c in sto_c) / runs) for i in (0, 1))
    out.append(PatternScore(_majority(rates), "stochastic", statistics.fmean(accs),
                            statistics.fmean(c5 / max(m, 1) for _, c5, m in sto_c), c1_mean, c5_mean,
                            sto_c[0][2], top1_std=std, unit_rates=rates))
    out.append(PatternScore(_majority(rates), "ensemble", ens_c[0] / ens_c[2], ens_c[1] / ens_c[2], ens_c[0],
                            ens_c[1], ens_c[2], unit_rates=rates, passes=runs))
    return out


def _majority(rates: Sequence[float]) -> str:
    """The pattern a strategy mostly runs: a unit counts as skipped when it ran for < half the samples."""
    return str(SkipPattern(tuple(r < 0.5 for r in rates)))
