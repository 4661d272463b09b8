"""MobileNetV2 (Sandler et al. 2018) with Adaptive Depth Networks' skippable sub-paths.

Layout: torchvision's ``mobilenet_v2`` — ``features.0`` (3x3 conv, BN, ReLU6), ``features.1..17``
(``InvertedResidual``), ``features.18`` (1x1 conv to 1280, BN, ReLU6), global pool, ``classifier``
(dropout 0.2, linear) — regrouped into the ``GatedNet`` protocol (``models/base.py``):

- ``stem`` = ``features.0``, ``features.1`` (the one-block 16-channel stage);
- ``stages`` = the five inverted-residual stages with ``n >= 2`` blocks (24, 32, 64, 96, 160
  channels; ``n`` = 2, 3, 4, 3, 3). ADN (``papers/001``, Sec. 3.1 and 4.1: "every residual stage is
  evenly divided into 2 sub-paths") keeps the first ``mandatory_blocks(n) = min(n - 1, ceil(n/2))``
  blocks of a stage and makes the rest its one skippable unit, as its official code does
  (``wchkang/depth``, ``models/mobilenetv2.py``: block ``i`` of ``n`` is skippable iff
  ``i >= (n + 1) // 2``, five skip flags): the base-net drops ``features.3, 6, 9, 10, 13, 16``;
- ``head`` = ``features.17`` (the one-block 320-channel stage), ``features.18``, pool, classifier.

``gating="block"`` (probabilistic gates): each block with an identity shortcut is its own unit
(10 units; a stage's first block changes the shape and stays mandatory). ``gating="none"``: 0 units.
Switchable BN (Sec. 3.4) in the mandatory blocks of each gated stage, following its unit. The
official code also gives the stem and head layers a second BN set (following the first / the last
unit); here they have one, so the stem stays shared by every sub-network (docs/DESIGN_NOTES.md).

``stem="cifar"``: the first conv and the first gated stage use stride 1 (total stride 8: a 32x32
input ends at 4x4), the usual CIFAR adaptation; ``stem="imagenet"`` is torchvision's (stride 32).
A torchvision state dict loads through ``convert_torchvision_state_dict``.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from gatesearch.models.base import GatedNet, check_layout
from gatesearch.models.blocks import NormFactory, _join
from gatesearch.models.gated_resnet import Stage, mandatory_blocks
from gatesearch.models.gates import build_gate
from gatesearch.models.norm import UNIT_ON, PlainNorm, SwitchableBatchNorm2d

#: (expansion t, channels c, blocks n, stride s) of the inverted-residual stages (Sandler et al., Table 2).
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of ``divisor``, never below 90% of ``v`` (torchvision / TF-slim rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvNormAct(nn.Sequential):
    """``conv -> norm(which) -> ReLU6``, torchvision's ``Conv2dNormActivation`` layout (``0``, ``1``, ``2``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, norm: NormFactory) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         norm(cout), nn.ReLU6(inplace=True))

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON,
                conv_out: torch.Tensor | None = None) -> torch.Tensor:
        """``conv_out``: ``self[0](x)`` when the caller already has it."""
        return self[2](self[1](self[0](x) if conv_out is None else conv_out, which))


class InvertedResidual(nn.Module):
    """torchvision's ``InvertedResidual`` (expand 1x1, depthwise 3x3, linear 1x1; same ``conv.*``
    layout) whose norms take the set switch ``which``; with an identity shortcut a ``scale [B]``
    keeps ``x + scale * F(x)`` (``scale = 0`` returns ``x``: MobileNetV2 has no ReLU after the add)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, norm: NormFactory) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        self.residual_adds = int(self.use_res_connect)
        self.downsample = None  # no projection shortcut (Stage reads it: unit blocks must keep their shape)
        layers: list[nn.Module] = [ConvNormAct(cin, hidden, 1, 1, 1, norm)] if expand_ratio != 1 else []
        layers += [ConvNormAct(hidden, hidden, 3, stride, hidden, norm), nn.Conv2d(hidden, cout, 1, bias=False), norm(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON, first_out: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]``; ``first_out``: ``self.conv[0][0](x)`` if already computed; ``scale``:
        per-sample keep factors ``[B]`` on the residual branch (a gated unit's block)."""
        out = x
        n = len(self.conv)
        for i in range(n - 2):
            out = self.conv[i](out, which, first_out if i == 0 else None)
        out = self.conv[n - 1](self.conv[n - 2](out), which)
        if self.use_res_connect:
            return _join(out, x, scale)
        if scale is not None:
            raise ValueError("a block without an identity shortcut cannot be scaled (it is never a unit)")
        return out


class GatedMobileNetV2(GatedNet):
    """MobileNetV2 split into gated stages (module docstring). ``width`` multiplies every width
    but the last conv's (1280 unless ``width > 1``), as torchvision's ``width_mult``."""

    def __init__(self, num_classes: int, width: float = 1.0, gating: str = "stage", stem: str = "imagenet",
                 switchable_bn: bool | None = None, gate_head: str | None = None, in_channels: int = 3,
                 dropout: float = 0.2, gate_init_keep: float = 0.9) -> None:
        super().__init__()
        switchable_bn = check_layout(gating, stem, switchable_bn)
        self.gating, self.stem_kind, self.switchable_bn = gating, stem, switchable_bn
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, 32 if stem == "cifar" else 224
        cifar = stem == "cifar"
        c0, c1 = make_divisible(32 * width), make_divisible(SETTING[0][1] * width)
        self.stem = nn.Sequential(
            Conv2dNormActivation(in_channels, c0, stride=1 if cifar else 2, activation_layer=nn.ReLU6),
            TorchvisionInvertedResidual(c0, c1, 1, SETTING[0][0]))
        stages, unit_channels, cin = [], [], c1
        for s, (t, c, n, stride) in enumerate(SETTING[1:-1]):
            cout, stride = make_divisible(c * width), 1 if cifar and s == 0 else stride
            n_base = {"stage": mandatory_blocks(n), "block": 1, "none": n}[gating]  # every first block reshapes
            base_norm = SwitchableBatchNorm2d if switchable_bn else PlainNorm
            blocks = [InvertedResidual(cin if i == 0 else cout, cout, stride if i == 0 else 1, t,
                                       base_norm if i < n_base else PlainNorm) for i in range(n)]
            rest = blocks[n_base:]
            units = [rest] if gating == "stage" and rest else [[b] for b in rest] if gating == "block" else []
            stages.append(Stage(blocks[:n_base], units, len(unit_channels), switchable_bn))
            unit_channels += [cout] * len(units)
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.n_units, self.unit_channels = len(unit_channels), tuple(unit_channels)
        t, c, _, _ = SETTING[-1]
        last = make_divisible(1280 * max(1.0, width))
        self.last = nn.Sequential(TorchvisionInvertedResidual(cin, make_divisible(c * width), 1, t),
                                  Conv2dNormActivation(make_divisible(c * width), last, kernel_size=1,
                                                       activation_layer=nn.ReLU6))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))
        self._init_weights()  # before the gate heads, which keep their own init
        self.gate_heads = nn.ModuleList(build_gate(gate_head, c, gate_init_keep) for c in unit_channels) if gate_head else None

    def _init_weights(self) -> None:
        """torchvision's MobileNetV2 init: conv Kaiming (fan-out), BN 1/0, linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last stage's output ``[B, 160w, H, W]`` -> logits ``[B, num_classes]``."""
        return self.classifier(torch.flatten(self.pool(self.last(h)), 1))

    def shared_prefix(self, h: torch.Tensor) -> torch.Tensor | None:
        """The first gated stage's first block's expansion conv (before its switchable BN)."""
        return self.stages[0].base[0].conv[0][0](h) if len(self.stages[0].base) else None


def convert_torchvision_state_dict(model: GatedMobileNetV2, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ``MobileNetV2`` state dict (same width, classes) as ``model``'s, for
    ``model.load_state_dict(..., strict=True)``. Key mapping: ``stem.0/1`` <- ``features.0/1``; the
    stage blocks in order (base, then units) <- ``features.2..16``; ``last.0/1`` <- ``features.17/18``;
    ``classifier`` unchanged; a norm's ``.bn.`` (plain) or ``.bns.0.`` / ``.bns.1.`` (both switchable
    sets, each a copy of the pretrained BN) is dropped from the name. Gate heads keep ``model``'s values.
    A torchvision key left unused or one missing is a ``ValueError``."""
    prefixes = {"stem.0.": "features.0.", "stem.1.": "features.1."}
    k = 2
    for s, stage in enumerate(model.stages):
        names = [f"stages.{s}.base.{i}." for i in range(len(stage.base))]
        names += [f"stages.{s}.units.{u}.{j}." for u, unit in enumerate(stage.units) for j in range(len(unit))]
        for name in names:
            prefixes[name], k = f"features.{k}.", k + 1
    prefixes.update({"last.0.": f"features.{k}.", "last.1.": f"features.{k + 1}.", "classifier.": "classifier."})
    out, used = {}, set()
    for key, value in model.state_dict().items():
        pre = next((p for p in prefixes if key.startswith(p)), None)
        if pre is None:  # gate heads: not part of torchvision's network
            out[key] = value
            continue
        tv_key = re.sub(r"\.(bn|bns\.[01])\.", ".", prefixes[pre] + key[len(pre):])
        if tv_key not in state:
            raise ValueError(f"torchvision state dict has no {tv_key!r} (for {key!r}): a different width or layout?")
        out[key] = state[tv_key].clone()
        used.add(tv_key)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"torchvision state dict keys without a place in this model: {unused[:5]}")
    return out


def _builder(width: float, doc: str) -> Callable[..., GatedMobileNetV2]:
    def build(num_classes: int = 1000, **kw) -> GatedMobileNetV2:
        return GatedMobileNetV2(num_classes, width=width, **kw)

    build.__doc__ = doc
    return build


#: This module's builders; ``models/__init__.py`` registers each name in ``MODELS`` and imports this
#: module when one is first built.
BUILDERS: dict[str, Callable[..., GatedMobileNetV2]] = {
    "mobilenet_v2": _builder(1.0, "MobileNetV2 1.0 (torchvision layout; ADN split: 5 units)."),
    "mobilenet_v2_x0_5": _builder(0.5, "MobileNetV2 0.5x width (small variant for CPU tests / CIFAR)."),
}
