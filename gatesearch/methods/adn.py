"""``adn``: skip-aware self-distillation of Adaptive Depth Networks (Kang & Lee, "Adaptive Depth
Networks with Skippable Sub-Paths", ``001_...txt``, Sec. 3.2, Eq. 2, Algorithm 1).

Per batch the super-net (pattern all ``F``) and the base-net (all ``T``) run on the same input:

    loss = a * CE(y_super, y) + (1 - a) * [ sum_s KL(h_super^s || h_base^s) + KL(y_super || y_base) ]

``h^s`` is the output of stage ``s``. Every KL term is as the official code (``wchkang/depth``,
``train_adn.py``) computes it: inputs divided by ``method.adn.temperature`` T, the KL times T^2;
the output KL over the teacher's ``output_kl_top_k`` classes (0 = all; the official ImageNet code
uses 500); the feature KL (``losses.kl_features``) on the stages ``feature_kl_stages`` (default all,
as Algorithm 1), reduced by ``feature_kl_reduction``. The super-net is the teacher and is detached
in every KL term, so the base-net learns from it and the super-net learns from the labels only.
``feature_kl=false`` keeps only the output KL (Sec. 4.5's ablation). ``two_backward=true``
back-propagates the super term first and frees its graph before the base-net runs (the
footnote of Algorithm 1: the official code's variant, less memory, what DDP's bucketing expects).
"""

from __future__ import annotations

import torch

from gatesearch.config import Config, ConfigError
from gatesearch.losses import kl_features, kl_logits
from gatesearch.methods.base import Backward, Method, StepResult, scalar
from gatesearch.models import GatedResNet
from gatesearch.patterns import SkipPattern


class ADN(Method):
    def __init__(self, cfg: Config, model: GatedResNet, steps_per_epoch: int) -> None:
        super().__init__(cfg, model, steps_per_epoch)
        self.opts = cfg.method.adn
        self.super_net = SkipPattern.super_net(model.n_units)
        self.base_net = SkipPattern.base_net(model.n_units)

    def _distill(self, t_logits: torch.Tensor, t_feats: list[torch.Tensor], s_logits: torch.Tensor,
                 s_feats: list[torch.Tensor]) -> torch.Tensor:
        """Algorithm 1 step 8, ``loss_base``: output KL plus the chosen stages' feature KL."""
        o = self.opts
        if o.output_kl_top_k > t_logits.shape[-1]:
            raise ConfigError(f"method.adn.output_kl_top_k: {o.output_kl_top_k} is more than the "
                              f"{t_logits.shape[-1]} classes (0 = every class)")
        kd = kl_logits(t_logits, s_logits, o.temperature, o.output_kl_top_k)
        if o.feature_kl:
            bad = [s for s in o.feature_kl_stages if s >= len(t_feats)]
            if bad:  # checked here: a backbone's stage count is what its forward returns
                raise ConfigError(f"method.adn.feature_kl_stages: stage {bad[0]} does not exist; "
                                  f"{self.cfg.model.name} has stages 0..{len(t_feats) - 1}")
            kd = kd + sum(kl_features(t_feats[s], s_feats[s], o.temperature, o.feature_kl_reduction)
                          for s in o.feature_kl_stages or range(len(t_feats)))
        return kd

    def train_step(
        self, model: GatedResNet, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, backward: Backward
    ) -> StepResult:
        a = self.opts.alpha
        if self.opts.two_backward:
            logits_s, feats_s = model(x, self.super_net, return_features=True)  # [B, K], [B, C_s, H_s, W_s]
            ce = self.ce(logits_s, y)
            backward(a * ce)  # frees the super-net graph before the base-net runs
            logits_s, feats_s = logits_s.detach(), [f.detach() for f in feats_s]
            logits_b, feats_b = model(x, self.base_net, return_features=True)
        else:  # one graph: the stem and the first conv run once for both sub-networks
            (logits_s, feats_s), (logits_b, feats_b) = model.forward_patterns(
                x, [self.super_net, self.base_net], return_features=True)
            ce = self.ce(logits_s, y)
        kd = self._distill(logits_s, feats_s, logits_b, feats_b)
        parts = {"ce": scalar(ce), "kd": scalar(kd)}
        if self.opts.two_backward:
            backward((1 - a) * kd)
            parts["loss"] = a * parts["ce"] + (1 - a) * parts["kd"]
            return StepResult(None, parts)
        return StepResult(a * ce + (1 - a) * kd, parts)
