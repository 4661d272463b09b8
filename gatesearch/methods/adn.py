"""``adn``: skip-aware self-distillation of Adaptive Depth Networks (Kang & Lee, "Adaptive Depth
Networks with Skippable Sub-Paths", NeurIPS 2024, Sec. 3.3, Eq. 4).

Per batch the super-net (pattern all ``F``) and the base-net (all ``T``) run on the same input:

    loss = a * CE(y_super, y) + (1 - a) * [ sum_s KL(h_super^s || h_base^s) + KL(y_super || y_base) ]

``h^s`` is the output of stage ``s`` (feature KL: softmax over channels per position, see
``losses.kl_features``); the super-net is the teacher and is detached in every KL term, so the
base-net learns from it and the super-net learns from the labels only.
``feature_kl=false`` keeps only the output KL. ``two_backward=true`` back-propagates the super
term first and frees its graph before the base-net runs (less memory; each backward touches the
parameters of one sub-network, which is what DDP's bucketing expects).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from gatesearch.losses import kl_features, kl_logits
from gatesearch.methods.base import Backward, Method, StepResult, scalar
from gatesearch.models import GatedResNet
from gatesearch.patterns import SkipPattern

if TYPE_CHECKING:
    from gatesearch.config import Config


class ADN(Method):
    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, steps_per_epoch)
        self.opts = cfg.method.adn
        self.super_net = SkipPattern.super_net(model.n_units)
        self.base_net = SkipPattern.base_net(model.n_units)

    def _distill(self, t_logits: torch.Tensor, t_feats: list[torch.Tensor], s_logits: torch.Tensor,
                 s_feats: list[torch.Tensor]) -> torch.Tensor:
        kd = kl_logits(t_logits, s_logits)
        if self.opts.feature_kl:
            kd = kd + sum(kl_features(t, s) for t, s in zip(t_feats, s_feats))
        return kd

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        a = self.opts.alpha
        if self.opts.two_backward:
            logits_s, feats_s = model(x, self.super_net, return_features=True)  # [B, K], [B, C_s, H_s, W_s]
            ce = F.cross_entropy(logits_s, y)
            backward(a * ce)  # frees the super-net graph before the base-net runs
            logits_s, feats_s = logits_s.detach(), [f.detach() for f in feats_s]
            logits_b, feats_b = model(x, self.base_net, return_features=True)
        else:  # one graph: the stem and the first conv run once for both sub-networks
            (logits_s, feats_s), (logits_b, feats_b) = model.forward_patterns(
                x, [self.super_net, self.base_net], return_features=True)
            ce = F.cross_entropy(logits_s, y)
        kd = self._distill(logits_s, feats_s, logits_b, feats_b)
        parts = {"ce": scalar(ce), "kd": scalar(kd)}
        if self.opts.two_backward:
            backward((1 - a) * kd)
            parts["loss"] = a * parts["ce"] + (1 - a) * parts["kd"]
            return StepResult(None, parts)
        return StepResult(a * ce + (1 - a) * kd, parts)
