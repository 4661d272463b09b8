"""``gated_depth``: Bernoulli-gated depth with periodic self-distillation.

Each mini-batch draws one ``b_s ~ Bernoulli(p_s)`` per unit and trains the sub-network that
pattern selects (dropped units are not computed; ``p_s`` between ``p_min`` and ``p_max`` from
``schedules.gated_depth_keep``). Every ``k``-th step is instead a two-pass self-distillation
step: the full network (teacher, no grad) and the base network (student) see the same batch,
``loss = a * CE(y_base, y) + (1 - a) * KL(y_full || y_base)``. At evaluation the full network's
gated paths are scaled by ``p_s`` (calibration, as stochastic depth's test-time rule).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from gatesearch.losses import kl_logits
from gatesearch.methods.base import Backward, Method, StepResult, calibrated, draw_pattern, scalar
from gatesearch.models import GatedResNet, Gates
from gatesearch.patterns import SkipPattern
from gatesearch.schedules import gated_depth_keep

if TYPE_CHECKING:
    from gatesearch.config import Config


class GatedDepth(Method):
    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, steps_per_epoch)
        self.opts = cfg.method.gated_depth
        self.base_net = SkipPattern.base_net(model.n_units)
        self.last_step = 0

    def keep_probs(self, step: int) -> list[float]:
        o = self.opts
        return gated_depth_keep(self.n_units, o.p_min, o.p_max, o.p_schedule, self.progress(step))

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        self.last_step = step
        if (step + 1) % self.opts.k == 0:
            return self._distill_step(model, x, y)
        pattern = draw_pattern(self.keep_probs(step))
        loss = F.cross_entropy(model(x, pattern), y)
        return StepResult(loss, {"ce": scalar(loss), "kept": float(pattern.n_kept)})

    def _distill_step(self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        a = self.opts.alpha
        stem = model.stem(x)  # shared by teacher and student
        with torch.no_grad():
            full = model.forward_from_stem(stem)  # [B, K] teacher
        base = model.forward_from_stem(stem, self.base_net)
        ce, kd = F.cross_entropy(base, y), kl_logits(full, base)
        return StepResult(a * ce + (1 - a) * kd, {"ce_base": scalar(ce), "kd": scalar(kd)})

    def eval_gates(self, model: GatedResNet, pattern: SkipPattern) -> Gates:
        if not self.opts.calibrate:
            return pattern
        return calibrated(pattern, self.keep_probs(self.last_step + 1), next(model.parameters()).device)

    def state_dict(self) -> dict[str, float]:
        return {"last_step": float(self.last_step)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.last_step = int(state.get("last_step", 0))
