"""Switchable (skip-aware) BatchNorm.

Adaptive Depth Networks (Kang & Lee, Sec. 3.2) give the mandatory blocks of a stage two BN
sets: the features that reach them differ in distribution depending on whether the stage's
gated unit runs after them, so one set is used for each case.
"""

from __future__ import annotations

import torch
from torch import nn

#: Index of the BN set used when the stage's gated unit runs / is skipped.
UNIT_ON, UNIT_OFF = 0, 1


class SwitchableBatchNorm2d(nn.Module):
    """Two BatchNorm2d sets; ``forward(x, which)`` picks one.

    ``which`` is ``UNIT_ON`` / ``UNIT_OFF`` (pattern path: one set, the other is not touched),
    or a ``[B]`` float tensor of keep factors (tensor path: each sample uses the ON set where
    its factor is 1 and the OFF set where it is 0; soft factors interpolate). The tensor path
    equals ``keep * bn_on(x) + (1 - keep) * bn_off(x)``; in training it normalises once (both
    sets see the same batch statistics, and both running averages are updated, as two BN calls
    would) and applies a per-sample affine in one ``addcmul``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList([nn.BatchNorm2d(num_features), nn.BatchNorm2d(num_features)])

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        if isinstance(which, int):
            return self.bns[which](x)
        on, off = self.bns[UNIT_ON], self.bns[UNIT_OFF]
        if not self.training:  # lerp is exact at 0 and 1: a 0/1 tensor gives the pattern path's numbers
            return torch.lerp(off(x), on(x), which.to(x.dtype).view(-1, 1, 1, 1))
        y, mean, invstd = _SwitchedBatchNorm.apply(x, which.to(on.weight.dtype), on.weight, off.weight,
                                                   on.bias, off.bias, on.eps)
        self._update_running_stats(x, mean, invstd)
        return y

    @torch.no_grad()
    def _update_running_stats(self, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor) -> None:
        """What two BatchNorm2d calls would do to their buffers: both sets take this batch's statistics."""
        n = x.numel() // x.shape[1]
        var = (invstd.double().pow(-2) - self.bns[UNIT_ON].eps).clamp_min(0) * (n / max(n - 1, 1))  # unbiased
        for bn in self.bns:
            bn.num_batches_tracked.add_(1)
            factor = _factor(bn)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(var.to(bn.running_var.dtype), factor)


class _SwitchedBatchNorm(torch.autograd.Function):
    """Training-mode BN with a per-sample affine: ``y = xhat * scale[b, c] + shift[b, c]``, where
    ``xhat`` is ``x [B, C, H, W]`` normalised with its batch statistics and ``scale = lerp(w_off,
    w_on, keep[b])`` (``shift`` likewise from the biases).

    Written out because autograd's version (``native_batch_norm`` then ``addcmul``) walks the
    activation ~8 times in backward; the affine's gradients already hold the two per-channel sums
    BN's backward needs (``sum g_xhat = sum_b scale * sum_hw g``, ``sum g_xhat * xhat = sum_b scale *
    sum_hw g * xhat``), so here it is 5 walks, and ``x`` itself is not kept for backward.
    Returns ``(y, mean [C], invstd [C])``; the statistics are for the running averages.
    """

    @staticmethod
    def forward(ctx, x, keep, w_on, w_off, b_on, b_off, eps):  # type: ignore[override]
        xhat, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
        k = keep.view(-1, 1)  # [B, 1]
        scale, shift = torch.lerp(w_off, w_on, k), torch.lerp(b_off, b_on, k)  # [B, C]
        y = torch.addcmul(shift.to(xhat.dtype)[:, :, None, None], xhat, scale.to(xhat.dtype)[:, :, None, None])
        ctx.save_for_backward(xhat, invstd, keep, w_on - w_off, b_on - b_off, scale)
        ctx.mark_non_differentiable(mean, invstd)
        return y, mean, invstd

    @staticmethod
    def backward(ctx, g, _gm, _gi):  # type: ignore[override]
        xhat, invstd, keep, dw, db, scale = ctx.saved_tensors
        g_scale = (g * xhat).sum((2, 3), dtype=torch.float32)  # [B, C]
        g_shift = g.sum((2, 3), dtype=torch.float32)
        k = keep.view(-1, 1).to(g_scale.dtype)  # [B, 1]
        g_x = g_keep = None
        if ctx.needs_input_grad[0]:
            n = g.numel() // g.shape[1]
            s = scale.to(g_scale.dtype)
            mean_g = (s * g_shift).sum(0) / n  # [C]: mean over (b, h, w) of g_xhat
            mean_gx = (s * g_scale).sum(0) / n  # [C]: mean of g_xhat * xhat
            inv = invstd.to(g_scale.dtype)
            # g_x = invstd * (g * scale - mean_g - xhat * mean_gx), in two walks
            g_x = torch.addcmul((-inv * mean_g).to(xhat.dtype)[None, :, None, None], xhat,
                                (-inv * mean_gx).to(xhat.dtype)[None, :, None, None])
            g_x.addcmul_(g, (s * inv).to(g.dtype)[:, :, None, None])
        if ctx.needs_input_grad[1]:
            g_keep = (g_scale * dw.to(g_scale.dtype) + g_shift * db.to(g_scale.dtype)).sum(1).to(keep.dtype)
        on, off = k, 1 - k  # each sample's share of the two sets
        g_w_on, g_w_off = ((on * g_scale).sum(0).to(dw.dtype), (off * g_scale).sum(0).to(dw.dtype))
        g_b_on, g_b_off = ((on * g_shift).sum(0).to(db.dtype), (off * g_shift).sum(0).to(db.dtype))
        return g_x, g_keep, g_w_on, g_w_off, g_b_on, g_b_off, None


def _factor(bn: nn.BatchNorm2d) -> float:
    """BatchNorm's running-average weight of this batch (``momentum=None``: cumulative average)."""
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


class PlainNorm(nn.Module):
    """A BatchNorm2d that ignores the switch, so blocks have one call signature."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        return self.bn(x)


class SwitchableLayerNorm(nn.Module):
    """Two LayerNorm sets over the last dimension; ``forward(x, which)`` picks one.

    Adaptive Depth Networks (Kang & Lee, Sec. 3.4, last paragraph; the ablation of Sec. 4.5,
    Table 4, ViT-b/32) replace switchable BN by switchable LN in the mandatory sub-paths of
    transformers: one set when the stage's skippable sub-path runs, one when it is skipped.

    ``which``: ``UNIT_ON`` / ``UNIT_OFF`` (pattern path: one set runs, the other is untouched), or a
    ``[B]`` tensor of keep factors (tensor path). LayerNorm has no batch statistics, so routing each
    sample to its own set is exact in training and evaluation alike. The tensor path is
    ``keep * ln_on(x) + (1 - keep) * ln_off(x)`` (soft factors interpolate): both sets share the
    normalisation ``xhat``, so it is computed once and the per-sample affine
    ``xhat * lerp(w_off, w_on, keep) + lerp(b_off, b_on, keep)`` applied in one ``addcmul``
    (``lerp`` returns its end points exactly, so 0/1 factors pick one set's weights exactly).
    The transformer stages pass 0/1 (whether the stage's unit runs, as ``gated_resnet.Stage``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.lns = nn.ModuleList([nn.LayerNorm(num_features, eps=eps), nn.LayerNorm(num_features, eps=eps)])

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        """``x [B, ..., C]`` -> same shape; ``which`` an int or ``[B]`` keep factors."""
        if isinstance(which, int):
            return self.lns[which](x)
        on, off = self.lns[UNIT_ON], self.lns[UNIT_OFF]
        xhat = torch.nn.functional.layer_norm(x, on.normalized_shape, None, None, on.eps)
        k = which.to(on.weight.dtype).view(-1, *([1] * (x.dim() - 1)))  # [B, 1, ..., 1]
        scale, shift = torch.lerp(off.weight, on.weight, k), torch.lerp(off.bias, on.bias, k)  # [B, 1, .., C]
        return torch.addcmul(shift.to(xhat.dtype), xhat, scale.to(xhat.dtype))

    def bake(self, which: int) -> PlainLayerNorm:
        """A plain LayerNorm holding a copy of set ``which`` (``export`` uses it for pruned nets)."""
        src = self.lns[which]
        fixed = PlainLayerNorm(src.normalized_shape, eps=src.eps)
        fixed.load_state_dict(src.state_dict())
        return fixed


class PlainLayerNorm(nn.LayerNorm):
    """A LayerNorm that ignores the switch (same parameters and keys as ``nn.LayerNorm``), so
    mandatory and skippable transformer blocks have one call signature."""

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)
