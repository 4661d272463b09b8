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
        # [B, C, H, W] normalised with the batch statistics, which both sets' running averages then take
        xhat, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, on.eps)
        self._update_running_stats(x, mean, invstd)
        keep = which.to(on.weight.dtype).view(-1, 1)  # [B, 1]
        scale = torch.lerp(off.weight, on.weight, keep).to(xhat.dtype)  # [B, C]: keep * w_on + (1 - keep) * w_off
        shift = torch.lerp(off.bias, on.bias, keep).to(xhat.dtype)
        return torch.addcmul(shift[:, :, None, None], xhat, scale[:, :, None, None])

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
