"""Residual blocks (torchvision layout) whose BatchNorms take a set switch.

Every block's ``forward(x, which)`` passes ``which`` to its norms, so a mandatory block can
use the BN set that matches its stage's gated unit (see ``norm.py``). A gated block also takes
``scale``, a per-sample keep factor on its residual branch: ``relu(shortcut(x) + scale * F(x))``
(``shortcut`` the identity, or the downsampling 1x1 conv + BN); ``skipped`` is its value at 0.
The downsampling shortcut's norm comes from its own factory, ``shortcut_norm`` (default: the
block's ``norm``): ADN's official ResNet keeps one BN there, shared by every sub-network, while
the residual branch of a mandatory block switches (``gated_resnet.GatedResNet``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gatesearch.models.norm import UNIT_ON

NormFactory = Callable[[int], nn.Module]


def _join(residual: torch.Tensor, identity: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``identity + residual``, or with ``scale [B]`` (a keep factor per sample, ``[1]`` broadcasts)
    ``identity + scale * residual`` in one ``addcmul`` (its backward: one product for the branch,
    one for the factor's gradient ``sum g * residual``)."""
    if scale is None:
        return residual + identity
    return torch.addcmul(identity, residual, scale.view(-1, 1, 1, 1).to(residual.dtype))


def skipped(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's output with its residual branch skipped (keep factor 0): ``relu(shortcut(x))``, the
    residual branch never computed. For an identity shortcut that is ``x`` itself (block inputs are
    ReLU outputs); a downsampling block still runs its 1x1 conv + BN shortcut (AIG, Veit & Belongie
    2018, ``out = shortcut(x) + z * F(x)`` then ReLU)."""
    return x if block.downsample is None else block.relu(block.downsample(x))


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class Downsample(nn.Module):
    """1x1 conv + norm shortcut (ResNet option B)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        self.conv = conv1x1(cin, cout, stride)
        self.bn = norm(cout)

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        return self.bn(self.conv(x), which)


class BasicBlock(nn.Module):
    expansion = 1
    residual_adds = 1  # elementwise additions per call (latency trace)

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory,
                 shortcut_norm: NormFactory | None = None) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, cout)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (Downsample(cin, cout, stride, shortcut_norm or norm)
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON, conv1_out: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """``conv1_out``: ``self.conv1(x)`` when the caller already has it (several sub-networks, one input);
        ``scale``: per-sample keep factors ``[B]`` on the residual branch (a gated unit's block)."""
        identity = x if self.downsample is None else self.downsample(x, which)
        out = self.relu(self.bn1(self.conv1(x) if conv1_out is None else conv1_out, which))
        out = self.bn2(self.conv2(out), which)
        return self.relu(_join(out, identity, scale))


class Bottleneck(nn.Module):
    expansion = 4
    residual_adds = 1  # elementwise additions per call (latency trace)

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory,
                 shortcut_norm: NormFactory | None = None) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # stride on the 3x3, as torchvision (ResNet v1.5)
        self.bn2 = norm(planes)
        self.conv3 = conv1x1(planes, cout)
        self.bn3 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (Downsample(cin, cout, stride, shortcut_norm or norm)
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON, conv1_out: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """``conv1_out``: ``self.conv1(x)`` when the caller already has it (several sub-networks, one input);
        ``scale``: per-sample keep factors ``[B]`` on the residual branch (a gated unit's block)."""
        identity = x if self.downsample is None else self.downsample(x, which)
        out = self.relu(self.bn1(self.conv1(x) if conv1_out is None else conv1_out, which))
        out = self.relu(self.bn2(self.conv2(out), which))
        out = self.bn3(self.conv3(out), which)
        return self.relu(_join(out, identity, scale))
