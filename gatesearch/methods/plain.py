"""``plain``: cross-entropy of the super-net (He et al. 2016), the no-method baseline; with
``method.plain.train_pattern`` it trains one fixed sub-network instead (e.g. the base depth)."""

from __future__ import annotations

import torch

from gatesearch.config import Config
from gatesearch.errors import UserError
from gatesearch.methods.base import Backward, Method, StepResult, scalar
from gatesearch.models import GatedResNet
from gatesearch.patterns import SkipPattern


class Plain(Method):
    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, steps_per_epoch)
        text = cfg.method.plain.train_pattern
        try:
            self.pattern = SkipPattern.parse(text, model.n_units) if text else None
        except ValueError as e:
            raise UserError(f"method.plain.train_pattern: {e}") from None

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        loss = self.ce(model(x, self.pattern), y)
        return StepResult(loss, {"ce": scalar(loss)})
