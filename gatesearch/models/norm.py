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
    its factor is 1 and the OFF set where it is 0; soft factors interpolate).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList([nn.BatchNorm2d(num_features), nn.BatchNorm2d(num_features)])

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        if isinstance(which, int):
            return self.bns[which](x)
        keep = which.view(-1, 1, 1, 1).to(x.dtype)
        return keep * self.bns[UNIT_ON](x) + (1 - keep) * self.bns[UNIT_OFF](x)


class PlainNorm(nn.Module):
    """A BatchNorm2d that ignores the switch, so blocks have one call signature."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        return self.bn(x)
