"""ResNets whose residual stages split into a mandatory base and skippable gated units.

``gating="stage"`` (Adaptive Depth Networks): the first ``min(n-1, ceil(n/2))`` blocks of a
stage are mandatory, the remaining blocks form the stage's one gated unit. ``gating="block"``
(probabilistic-gates layout): every block is its own unit; with ``gate_downsample=False`` the
shape-changing first block of a stage stays mandatory (resnet50: 12 units instead of AIG's 16).
``gating="none"``: a plain ResNet with the same modules (the no-gating reference).

Switchable BN (ADN, ``001_...txt`` Sec. 3.4) sits in the residual branch of every mandatory block.
The 1x1 conv + BN shortcut of a mandatory downsampling block keeps one BN shared by every
sub-network, as ADN's official ResNet (``wchkang/depth`` ``models/resnet.py``: ``downsample`` is one
``norm_layer``; ResNet-50 25,583,144 parameters, Table 1's 25.58 M); ``switchable_shortcut_bn=True``
gives it two sets as well (7,680 more in ResNet-50).

The active sub-network is the ``gates`` argument of ``forward`` — never module state.
A keep factor ``k`` (tensor gates) scales the residual branch of each block of its unit,
``h <- relu(shortcut(h) + k * F(h))``: AIG's gated residual (Veit & Belongie 2018; 002_...txt
Sec. 2.1, ``x_l = x_{l-1} + z_l F_l(x_{l-1})``) and stochastic depth's test-time rule (Huang et
al. 2016). A skipped unit (``SkipPattern``) never computes a residual branch: an identity block
returns ``h`` (block inputs are ReLU outputs, ``h >= 0``), a downsampling block ``relu(shortcut(h))``
(``blocks.skipped``), so 0/1 factors give exactly the numbers of the matching ``SkipPattern``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from gatesearch.models.base import GATINGS, STEMS, GatedNet, GateFn, Gates, check_layout, stage_switch
from gatesearch.models.blocks import BasicBlock, Bottleneck, skipped
from gatesearch.models.gates import build_gate
from gatesearch.models.norm import PlainNorm, SwitchableBatchNorm2d
from gatesearch.patterns import SkipPattern
from gatesearch.registry import Registry

__all__ = ["GATINGS", "STEMS", "GatedResNet", "GateFn", "Gates", "MODELS", "Stage", "create_model", "mandatory_blocks"]



def mandatory_blocks(n: int) -> int:
    """ADN split: ``min(n - 1, ceil(n / 2))`` mandatory blocks in a stage of ``n``."""
    return min(n - 1, math.ceil(n / 2))


class Stage(nn.Module):
    """``base`` blocks (always run) followed by ``units`` (each a list of blocks, skippable)."""

    def __init__(self, base: list[nn.Module], units: list[list[nn.Module]], unit_offset: int, switchable: bool,
                 gate_downsample: bool = False):
        super().__init__()
        self.base = nn.ModuleList(base)
        self.units = nn.ModuleList(nn.ModuleList(u) for u in units)
        if any(b.downsample is not None for u in units for b in (u[1:] if gate_downsample else u)):
            raise ValueError("a gated unit's blocks must keep their input shape (identity shortcut)"
                             + ("" if gate_downsample else "; gate_downsample=True allows it for a unit's first block"))
        self.unit_offset = unit_offset
        # Switchable BN: the base's BN set follows this stage's (only) unit.
        self.switch_unit = unit_offset if switchable else None

    def _which(self, gates: Gates, batch: int) -> int | torch.Tensor:
        return stage_switch(gates, self.switch_unit, batch)

    def forward(self, h: torch.Tensor, gates: Gates, conv1_out: torch.Tensor | None = None) -> torch.Tensor:
        """``conv1_out``: the first base block's ``conv1(h)``, when already computed."""
        which = self._which(gates, h.shape[0])
        for i, block in enumerate(self.base):
            h = block(h, which, conv1_out if i == 0 else None)
        for j, unit in enumerate(self.units):
            u = self.unit_offset + j
            if isinstance(gates, SkipPattern) and gates.skipped[u]:
                h = skip_unit(unit, h)  # no residual branch is computed (a downsampling shortcut is)
                continue
            keep = None  # [B] keep factors on the unit's residual branches (module docstring)
            if isinstance(gates, torch.Tensor):
                keep = gates[:, u]
            elif gates is not None and not isinstance(gates, SkipPattern):
                keep = gates(u, h)
            for block in unit:
                h = block(h, scale=keep)
        return h


def skip_unit(unit: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
    """A skipped unit's output on its input ``h [B, C, H, W]``: ``h`` for identity blocks, the
    shortcut (then ReLU) of a downsampling first block (``blocks.skipped``)."""
    for block in unit:
        h = skipped(block, h)
    return h


class GatedResNet(GatedNet):
    """A ResNet of ``Stage``s. ``n_units`` gated units, numbered stage by stage; ``forward`` and
    the rest of the protocol are ``GatedNet``'s."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        widths: list[int],
        num_classes: int,
        gating: str = "stage",
        stem: str = "cifar",
        switchable_bn: bool | None = None,
        gate_head: str | None = None,
        in_channels: int = 3,
        gate_init_keep: float = 0.9,
        gate_downsample: bool | None = None,
        zero_init_residual: bool = False,
        switchable_shortcut_bn: bool = False,
    ) -> None:
        """``gate_downsample``: block gating also makes each stage's shape-changing first block a unit
        (``None``: on for ``gating="block"``, the papers' layout); it needs ``gating="block"``.
        ``switchable_shortcut_bn``: a mandatory downsampling block's shortcut BN switches with the
        stage's unit too (module docstring); it needs switchable BN."""
        super().__init__()
        switchable_bn = check_layout(gating, stem, switchable_bn)
        if switchable_shortcut_bn and not switchable_bn:
            raise ValueError("switchable_shortcut_bn needs switchable_bn (gating='stage')")
        if gate_downsample is None:
            gate_downsample = gating == "block"
        if gate_downsample and gating != "block":
            raise ValueError("gate_downsample needs gating='block'")
        self.gating, self.stem_kind, self.switchable_bn = gating, stem, switchable_bn
        self.gate_downsample, self.switchable_shortcut_bn = gate_downsample, switchable_shortcut_bn
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, 32 if stem == "cifar" else 224
        stem_width = widths[0]
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages, unit_channels = [], []
        cin = stem_width
        for s, (n, planes) in enumerate(zip(layers, widths)):
            stride = 1 if s == 0 else 2
            cout = planes * block.expansion
            n_base = {"stage": mandatory_blocks(n), "block": 0, "none": n}[gating]
            if gating == "block" and (stride != 1 or cin != cout) and not gate_downsample:
                n_base = 1  # the shape-changing first block stays mandatory
            base_norm = SwitchableBatchNorm2d if switchable_bn else PlainNorm
            shortcut_norm = base_norm if switchable_shortcut_bn else PlainNorm
            base = [block(cin if i == 0 else cout, planes, stride if i == 0 else 1, base_norm, shortcut_norm)
                    for i in range(n_base)]
            rest = [block(cin if i == 0 else cout, planes, stride if i == 0 else 1, PlainNorm) for i in range(n_base, n)]
            units = [rest] if gating == "stage" and rest else [[b] for b in rest] if gating == "block" else []
            stages.append(Stage(base, units, len(unit_channels), switchable_bn, gate_downsample))
            unit_channels += [u[0].conv1.in_channels for u in units]  # each unit's input (what its gate sees)
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.n_units = len(unit_channels)
        self.unit_channels = tuple(unit_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.gate_heads = nn.ModuleList(build_gate(gate_head, c, gate_init_keep) for c in unit_channels) if gate_head else None
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # the network's convolutions only: the gate heads keep their own (ConvNet-AIG's) initialisation
        for m in [*self.stem.modules(), *self.stages.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero_init_residual: the last BN of each residual branch starts at 0 (Goyal et al. 2017)
        for stage in self.stages if zero_init_residual else []:
            for block in list(stage.base) + [b for u in stage.units for b in u]:
                last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
                bns = last.bns if isinstance(last, SwitchableBatchNorm2d) else [last.bn]
                for bn in bns:
                    nn.init.zeros_(bn.weight)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> logits ``[B, num_classes]``: global average pool, then ``fc``."""
        return self.fc(torch.flatten(self.pool(h), 1))

    def shared_prefix(self, h: torch.Tensor) -> torch.Tensor | None:
        """The first stage's first base block's ``conv1(h)`` (before any switchable BN)."""
        first = self.stages[0].base
        return first[0].conv1(h) if len(first) else None


MODELS: Registry[Callable[..., GatedResNet]] = Registry("model")

_CIFAR_WIDTHS = [16, 32, 64]
_IMAGENET_WIDTHS = [64, 128, 256, 512]


def _cifar(depth: int) -> Callable[..., GatedResNet]:
    n = (depth - 2) // 6

    def build(num_classes: int = 10, **kw) -> GatedResNet:
        return GatedResNet(BasicBlock, [n] * 3, _CIFAR_WIDTHS, num_classes, **kw)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, Sec. 4.2): 3 stages of {n} BasicBlocks."
    return build


def _imagenet(block: type[BasicBlock] | type[Bottleneck], layers: list[int], depth: int) -> Callable[..., GatedResNet]:
    def build(num_classes: int = 1000, **kw) -> GatedResNet:
        return GatedResNet(block, layers, _IMAGENET_WIDTHS, num_classes, **kw)

    build.__doc__ = f"ResNet-{depth}: 4 stages {layers} of {block.__name__}."
    return build


for _depth in (20, 56, 110):
    MODELS.add(f"resnet{_depth}", _cifar(_depth))
MODELS.add("resnet18", _imagenet(BasicBlock, [2, 2, 2, 2], 18))
MODELS.add("resnet34", _imagenet(BasicBlock, [3, 4, 6, 3], 34))
MODELS.add("resnet50", _imagenet(Bottleneck, [3, 4, 6, 3], 50))
MODELS.add("resnet101", _imagenet(Bottleneck, [3, 4, 23, 3], 101))


def create_model(name: str, num_classes: int, gating: str = "stage", stem: str = "cifar", **kw) -> GatedResNet:
    """Build a registered model. ``kw``: ``switchable_bn``, ``gate_head`` (``logit``/``aig``), ``gate_init_keep``,
    ``gate_downsample``, ``in_channels``, ``zero_init_residual``, ``switchable_shortcut_bn``."""
    return MODELS.get(name)(num_classes=num_classes, gating=gating, stem=stem, **kw)
