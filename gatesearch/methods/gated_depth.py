"""``gated_depth``: Bernoulli-gated depth with periodic self-distillation (Gated Depth networks,
``000_...txt``, Sec. 3-4; defaults from Sec. 6.1).

Each mini-batch draws one ``b_s ~ Bernoulli(p_s)`` per unit and trains the sub-network that
pattern selects (Eq. 1 and 4; dropped units are not computed; ``p_s`` between ``p_min`` and
``p_max`` from ``schedules.gated_depth_keep``). Every ``k``-th step is instead the two-pass
self-distillation step of Eq. 5-7: the full network (``b = 1``) and the base network (``b = 0``)
see the same batch, ``loss = a * CE(y_base, y) + (1 - a) * KL(y_full || y_base)``. Eq. 7 does not
stop the gradient at the full network: with ``teacher_grad`` (default) the KL term trains both
sides, the gated units included ("ensuring they learn to enhance features without drastically
altering their semantic content", Sec. 4); ``teacher_grad=false`` runs the full network under
``no_grad`` (classic distillation). At evaluation the full network's gated paths are scaled by
``p_s`` (calibration, Sec. 4 "Inference-time Considerations").
"""

from __future__ import annotations

import torch

from gatesearch.config import Config
from gatesearch.losses import kl_logits
from gatesearch.methods.base import Backward, Method, StepResult, calibrated, draw_pattern, scalar
from gatesearch.models import GatedResNet, Gates
from gatesearch.patterns import SkipPattern
from gatesearch.schedules import gated_depth_keep


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
        loss = self.ce(model(x, pattern), y)
        return StepResult(loss, {"ce": scalar(loss), "kept": float(pattern.n_kept)})

    def _distill_step(self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Eq. 7: ``a * CE(f(x; b=0), y) + (1 - a) * KL(f(x; b=1) || f(x; b=0))``."""
        a, teacher_grad = self.opts.alpha, self.opts.teacher_grad
        if teacher_grad:  # one graph: the stem and the first conv run once for both passes
            full, base = model.forward_patterns(x, [None, self.base_net])  # [B, K] each
        else:
            stem = model.stem(x)  # shared by teacher and student
            with torch.no_grad():
                full = model.forward_from_stem(stem)
            base = model.forward_from_stem(stem, self.base_net)
        ce, kd = self.ce(base, y), kl_logits(full, base, teacher_grad=teacher_grad)
        return StepResult(a * ce + (1 - a) * kd, {"ce_base": scalar(ce), "kd": scalar(kd)})

    def eval_gates(self, model: GatedResNet, pattern: SkipPattern) -> Gates:
        if not self.opts.calibrate:
            return pattern
        return calibrated(pattern, self.keep_probs(self.last_step + 1), next(model.parameters()).device)

    def state_dict(self) -> dict[str, float]:
        return {"last_step": float(self.last_step)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.last_step = int(state.get("last_step", 0))
