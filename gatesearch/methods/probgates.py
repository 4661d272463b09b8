"""``probgates``: learned probabilistic gates (Herrmann, Bowen & Zabih, "Channel Selection Using
Gumbel Softmax", ECCV 2020; AIG, Veit & Belongie, ECCV 2018).

Every unit has a gate that yields ``[B, 2]`` logits: ``model.gate_head=logit`` (one learned
logit per unit, data-independent: the ``[B, n_units]`` keep tensor is computed before the
forward) or ``aig`` (a small head on the unit's input, data-dependent: passed as a ``GateFn``).
Training samples straight-through Gumbel gates at temperature ``tau`` (annealed geometrically
``tau_start -> tau_end``) and adds ``weight * rate_loss(keep_prob, target)``, with the
noise-free keep probabilities ``keep_prob [B, n_units]`` (``losses.RATE_LOSSES``). The target is
constant, annealed (per-epoch list, last held) or variable (EMA of the observed activation,
starting at ``target``). Inference: ``threshold`` (keep where keep_prob >= threshold),
``always_on``, ``stochastic`` (top-1 mean and std over ``runs`` sampled passes), ``ensemble``
(mean softmax of ``runs`` sampled passes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F

from gatesearch.evaluate import GateSource, PerBatch, evaluate, evaluate_ensemble, evaluate_stochastic
from gatesearch.losses import RATE_LOSSES
from gatesearch.methods.base import Backward, Method, StepResult, scalar
from gatesearch.models import GatedResNet, Gates
from gatesearch.models.gates import gumbel_gate
from gatesearch.patterns import SkipPattern
from gatesearch.schedules import annealed_target, ema, geometric_temperature

if TYPE_CHECKING:
    from gatesearch.config import Config


def sample_gates(model: GatedResNet, x: torch.Tensor, tau: float) -> tuple[Gates, list[torch.Tensor], list[torch.Tensor]]:
    """Straight-through Gumbel gates for batch ``x``: ``(gates, keeps, keep_probs)``; the two lists
    fill with one ``[B]`` tensor per unit (for ``aig`` while the forward pass runs)."""
    keeps: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    heads = model.gate_heads
    if _is_logit(model):
        for head in heads:
            k, p = gumbel_gate(head(x), tau)
            keeps.append(k)
            probs.append(p)
        return torch.stack(keeps, 1), keeps, probs  # [B, n_units]

    def gate_fn(u: int, h: torch.Tensor) -> torch.Tensor:
        k, p = gumbel_gate(heads[u](h), tau)
        keeps.append(k)
        probs.append(p)
        return k

    return gate_fn, keeps, probs


def _is_logit(model: GatedResNet) -> bool:
    from gatesearch.models.gates import LogitGate

    return model.gate_heads is not None and isinstance(model.gate_heads[0], LogitGate)


def _logit_keep_probs(model: GatedResNet) -> torch.Tensor:
    """``[n_units]`` keep probabilities of data-independent gates."""
    dummy = torch.zeros(1, device=next(model.parameters()).device)
    return torch.cat([F.softmax(h(dummy), -1)[:, 1] for h in model.gate_heads])


def strategy_gates(model: GatedResNet, strategy: str, threshold: float = 0.5) -> GateSource:
    """Gates of an inference strategy: ``threshold`` (deterministic), ``always_on``, or ``stochastic``
    / ``ensemble`` (drawn per batch from the keep probabilities)."""
    if strategy == "always_on":
        return None
    sample = strategy in ("stochastic", "ensemble")
    if _is_logit(model):
        probs = _logit_keep_probs(model).detach()  # [n_units]
        if not sample:
            return SkipPattern(tuple(bool(p < threshold) for p in probs))
        return PerBatch(lambda x: torch.bernoulli(probs.expand(x.shape[0], -1)))

    def gate_fn(u: int, h: torch.Tensor) -> torch.Tensor:
        p = F.softmax(model.gate_heads[u](h), -1)[:, 1]  # [B]
        return torch.bernoulli(p) if sample else (p >= threshold).to(p.dtype)

    return gate_fn


@torch.no_grad()
def gate_rates(model: GatedResNet, loader: Iterable, device: torch.device, max_batches: int = 8) -> list[float]:
    """Mean keep probability of each unit (over validation data for data-dependent gates)."""
    if _is_logit(model):
        return _logit_keep_probs(model).tolist()
    was = model.training
    model.eval()
    sums = torch.zeros(model.n_units)
    n = 0
    for i, (x, _) in enumerate(loader):
        if i >= max_batches:
            break
        gates, _, probs = sample_gates(model, x.to(device), tau=1.0)
        model(x.to(device), gates)
        sums += torch.stack(probs, 1).sum(0).cpu()
        n += len(x)
    model.train(was)
    return (sums / max(n, 1)).tolist()


class ProbGates(Method):
    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, steps_per_epoch)
        self.opts = cfg.method.probgates
        self.variable_target = self.opts.target
        self.rate_loss = RATE_LOSSES[self.opts.loss]

    def target(self, epoch: int) -> float:
        o = self.opts
        if o.target_schedule == "annealed":
            return annealed_target(o.targets, epoch)
        return self.variable_target if o.target_schedule == "variable" else o.target

    def param_groups(self, model: GatedResNet) -> list[dict]:
        gate_ids = {id(p) for p in model.gate_parameters()}
        rest = [p for p in model.parameters() if id(p) not in gate_ids]
        gates = {"params": model.gate_parameters(), "lr_mult": self.opts.gate_lr_mult,
                 "weight_decay": self.opts.gate_weight_decay}
        return [{"params": rest}, gates]

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        tau = geometric_temperature(self.opts.tau_start, self.opts.tau_end, self.progress(step))
        gates, keeps, probs = sample_gates(model, x, tau)
        ce = self.ce(model(x, gates), y)
        target = self.target(epoch)
        rate = self.rate_loss(torch.stack(probs, 1), target)  # keep_prob [B, n_units]
        act = scalar(torch.stack(keeps, 1).mean())
        if self.opts.target_schedule == "variable":
            self.variable_target = ema(self.variable_target, act, self.opts.target_ema)
        parts = {"ce": scalar(ce), "rate_loss": scalar(rate), "act": act, "target": target, "tau": tau}
        return StepResult(ce + self.opts.weight * rate, parts)

    def eval_metrics(self, model: GatedResNet, loader: Iterable, device: torch.device) -> dict[str, float]:
        rates = gate_rates(model, loader, device)
        out = {f"gate_rate_{u}": r for u, r in enumerate(rates)}
        out["gate_rate_mean"] = sum(rates) / max(len(rates), 1)
        o = self.opts
        gates = strategy_gates(model, o.inference, o.threshold)
        if o.inference == "stochastic":
            out["top1_gated"], out["top1_gated_std"] = evaluate_stochastic(model, loader, gates, device, o.runs)
        elif o.inference == "ensemble":
            out["top1_gated"] = evaluate_ensemble(model, loader, gates, device, o.runs).top1
        else:
            out["top1_gated"] = evaluate(model, loader, gates, device).top1
        return out

    def state_dict(self) -> dict[str, float]:
        return {"variable_target": self.variable_target}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.variable_target = float(state.get("variable_target", self.opts.target))
