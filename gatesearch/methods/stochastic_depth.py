"""``stochastic_depth`` (Huang et al. 2016, "Deep Networks with Stochastic Depth"): each unit is
dropped for a whole mini-batch with probability ``1 - p_s``, ``p_s`` decaying linearly to
``p_last``; dropped units are not computed. At evaluation the gated path is scaled by ``p_s``."""

from __future__ import annotations

import torch

from gatesearch.config import Config
from gatesearch.methods.base import Backward, Method, StepResult, calibrated, draw_pattern, scalar
from gatesearch.models import GatedResNet, Gates
from gatesearch.patterns import SkipPattern
from gatesearch.schedules import stochastic_depth_keep


class StochasticDepth(Method):
    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, steps_per_epoch)
        self.keep_probs = stochastic_depth_keep(model.n_units, cfg.method.stochastic_depth.p_last)

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        pattern = draw_pattern(self.keep_probs)
        loss = self.ce(model(x, pattern), y)
        return StepResult(loss, {"ce": scalar(loss), "kept": float(pattern.n_kept)})

    def eval_gates(self, model: GatedResNet, pattern: SkipPattern) -> Gates:
        return calibrated(pattern, self.keep_probs, next(model.parameters()).device)
