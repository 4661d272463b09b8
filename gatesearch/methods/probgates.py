"""``probgates``: learned probabilistic gates (Herrmann, Bowen & Zabih, "Deep networks with
probabilistic gates", paper ``002_7f2a293bb907def9`` (the project's papers folder); built on ConvNet-AIG, Veit &
Belongie, "Convolutional Networks with Adaptive Inference Graphs", ECCV 2018).

Every unit has a gate that yields ``[B, 2]`` logits: ``model.gate_head=logit`` (one learned
logit per unit, data-independent: the ``[B, n_units]`` keep tensor is computed before the
forward) or ``aig`` (AIG's head on the unit's input, data-dependent: passed as a ``GateFn``).
Training samples straight-through Gumbel gates ``z`` at temperature ``tau`` (paper Sec. 2.1, AIG:
fixed at 1; a geometric ``tau_start -> tau_end`` annealing is an option) and minimises
``L_MC + weight * L_target`` (Sec. 2.1) with ``L_target`` one of ``losses.RATE_LOSSES`` acting on
the sampled ``z`` (``rate_on=sample``, as the paper and AIG; ``prob``: the noise-free keep
probabilities). The target is constant, annealed (supplement S2.1: down by ``anneal_step`` every
``anneal_every`` epochs, or an explicit per-epoch list) or variable (S2.2: restarts at ``target``
each epoch, then a moving average or EMA of the observed batch activation); ``unit_targets`` gives
the per-gate loss one target per unit (AIG's schedules; units at 1 leave the loss). Inference
(Sec. 3.2): ``threshold`` (keep where keep_prob >= threshold), ``always_on``, ``stochastic`` (top-1
mean and std over ``runs`` sampled passes), ``ensemble`` (mean softmax of ``runs`` sampled passes).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from gatesearch.config import Config, ConfigError
from gatesearch.evaluate import GateSource, PerBatch, reestimate_bn
from gatesearch.losses import RATE_LOSSES, rate_per_gate
from gatesearch.methods.base import Backward, Method, StepResult, scalar
from gatesearch.models import GatedResNet, Gates
from gatesearch.models.gates import LogitGate, gumbel_gate
from gatesearch.parallel import broadcast_, global_batch_index, global_batch_mean, rank_world, shard_rows, summed
from gatesearch.patterns import SkipPattern
from gatesearch.schedules import annealed_target, geometric_temperature, stepped_target, variable_target


def batch_noise(model: GatedResNet, x: torch.Tensor) -> torch.Tensor:
    """The uniform draws of a training batch's Gumbel gates, ``[n_units, B]`` for ``x [B, ...]``: drawn
    for the global batch ``[n_units, W * B]`` on rank 0 and broadcast, each rank keeping its columns, so
    ``W`` ranks sample the gates one process samples for the same global batch (002 Sec. 2.1: one sample
    per image and gate, independent). Drawn as one tensor; in one process (CPU) the same numbers as
    ``n_units`` successive ``[B]`` draws."""
    _, w = rank_world()
    u = broadcast_(torch.rand(model.n_units, w * x.shape[0], device=x.device))
    return shard_rows(u.T).T  # [n_units, B]


def sample_gates(model: GatedResNet, x: torch.Tensor, tau: float,
                 noise: torch.Tensor | None = None) -> tuple[Gates, list[torch.Tensor], list[torch.Tensor]]:
    """Straight-through Gumbel gates for batch ``x``: ``(gates, keeps, keep_probs)``; the two lists
    fill with one ``[B]`` tensor per unit (for ``aig`` while the forward pass runs). ``noise``:
    ``[n_units, B]`` uniform draws (``batch_noise``), else each gate draws from the global RNG."""
    keeps: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    heads = model.gate_heads
    if _is_logit(model):
        for u, head in enumerate(heads):
            k, p = gumbel_gate(head(x), tau, noise=None if noise is None else noise[u])
            keeps.append(k)
            probs.append(p)
        return torch.stack(keeps, 1), keeps, probs  # [B, n_units]

    def gate_fn(u: int, h: torch.Tensor) -> torch.Tensor:
        k, p = gumbel_gate(heads[u](h), tau, noise=None if noise is None else noise[u])
        keeps.append(k)
        probs.append(p)
        return k

    return gate_fn, keeps, probs


def _is_logit(model: GatedResNet) -> bool:
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
    sums = torch.zeros(model.n_units, dtype=torch.float64)
    n = 0
    gen = torch.Generator(device)
    for i, (x, _) in enumerate(loader):
        if global_batch_index(i) >= max_batches:  # the split's first max_batches batches, over every rank
            break
        x = x.to(device)
        gen.manual_seed(global_batch_index(i))  # a batch's gates drawn by its place in the split
        noise = torch.rand(model.n_units, x.shape[0], device=device, generator=gen)
        gates, _, probs = sample_gates(model, x, tau=1.0, noise=noise)
        model(x, gates)
        sums += torch.stack(probs, 1).sum(0).cpu().double()
        n += len(x)
    model.train(was)
    total = summed([*sums.tolist(), n])  # data parallelism: each rank scored its shard
    return [s / max(total[-1], 1) for s in total[:-1]]


class ProbGates(Method):
    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, steps_per_epoch)
        self.opts = o = cfg.method.probgates
        self.rate_loss = RATE_LOSSES[o.loss]
        if o.unit_targets and len(o.unit_targets) != model.n_units:
            raise ConfigError(f"method.probgates.unit_targets: {len(o.unit_targets)} targets for a model with "
                              f"{model.n_units} units")
        # variable target (supplement S2.2): the target so far in epoch `_epoch`, after `_seen` batches
        self.variable_target, self._epoch, self._seen = o.target, 0, 0

    def target(self, epoch: int) -> float:
        """The scalar target rate of the current batch in ``epoch`` (0-based)."""
        o = self.opts
        if o.target_schedule == "annealed":
            if o.targets:
                return annealed_target(o.targets, epoch)
            return stepped_target(o.anneal_start, o.target, o.anneal_step, o.anneal_every, epoch)
        if o.target_schedule == "variable":
            return self.variable_target if epoch == self._epoch else o.target  # a new epoch restarts
        return o.target

    def param_groups(self, model: GatedResNet) -> list[dict]:
        gate_ids = {id(p) for p in model.gate_parameters()}
        rest = [p for p in model.parameters() if id(p) not in gate_ids]
        gates = {"params": model.gate_parameters(), "lr_mult": self.opts.gate_lr_mult}
        if self.opts.gate_weight_decay is not None:  # else the optimizer's, as ConvNet-AIG
            gates["weight_decay"] = self.opts.gate_weight_decay
        return [{"params": rest}, gates]

    def rate(self, keeps: torch.Tensor, probs: torch.Tensor, target: float) -> torch.Tensor:
        """``L_target`` on the sampled gates ``keeps`` or the probabilities ``probs`` (``rate_on``), both
        ``[B, n_units]``; per-unit targets leave the units whose target is 1 out (AIG)."""
        z = keeps if self.opts.rate_on == "sample" else probs
        if self.opts.unit_targets:
            t = torch.tensor(self.opts.unit_targets, device=z.device)
            return rate_per_gate(z, t, active=t < 1)
        return self.rate_loss(z, target)

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        tau = geometric_temperature(self.opts.tau_start, self.opts.tau_end, self.progress(step))
        gates, keeps, probs = sample_gates(model, x, tau, batch_noise(model, x))
        ce = self.ce(model(x, gates), y)
        target = self.target(epoch)
        # [B, n_units]; under data parallelism [1, n_units], the global batch's mean (the batch of 002
        # Sec. 3.1's per-batch loss and of AIG's per-gate one is the mini-batch, all ranks' shards)
        z = global_batch_mean(torch.stack(keeps, 1))
        rate = self.rate(z, global_batch_mean(torch.stack(probs, 1)), target)
        act = scalar(z.mean())  # the batch's activation rate
        if self.opts.target_schedule == "variable":
            if epoch != self._epoch:
                self._epoch, self._seen = epoch, 0
            self._seen += 1
            self.variable_target = variable_target(target, act, self._seen, self.opts.variable_update,
                                                   self.opts.target_ema)
        parts = {"ce": scalar(ce), "rate_loss": scalar(rate), "act": act, "target": target, "tau": tau}
        return StepResult(ce + self.opts.weight * rate, parts)

    def eval_metrics(self, model: GatedResNet, loader: Iterable, device: torch.device) -> dict[str, float]:
        """Mean keep probability per unit; the strategies' top-1 (``top1_gated`` for the configured one)
        come from ``evaluate.candidate_table`` with every other candidate."""
        rates = gate_rates(model, loader, device)
        out = {f"gate_rate_{u}": r for u, r in enumerate(rates)}
        out["gate_rate_mean"] = sum(rates) / max(len(rates), 1)
        return out

    def finish_training(self, model: GatedResNet, train_loader: Iterable, device: torch.device) -> None:
        """002 Sec. 4.1.1: "before final evaluation, we run training with a learning rate of zero and a large
        batch size for 200 batches in order to improve the stability and performance of the BatchNorm
        layers": BN statistics re-estimated on ``final_bn_batches`` training batches in train mode, the gates
        drawn as in training (Bernoulli(keep_prob), which a hard Gumbel sample is), as a cumulative average
        over the batches (the precise estimate of the statistics that many batches give, where the paper's
        large batch size serves the same end); the model keeps them. Stated on ImageNet in the paper, done
        for every data set here (docs/DESIGN_NOTES.md, item 45)."""
        n = self.cfg.method.probgates.final_bn_batches
        if n > 0:
            reestimate_bn(model, train_loader, strategy_gates(model, "stochastic"), n, device)

    def state_dict(self) -> dict[str, float]:
        return {"variable_target": self.variable_target, "variable_epoch": self._epoch, "variable_seen": self._seen}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.variable_target = float(state.get("variable_target", self.opts.target))
        self._epoch, self._seen = int(state.get("variable_epoch", 0)), int(state.get("variable_seen", 0))
