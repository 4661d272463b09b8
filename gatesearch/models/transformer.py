"""What ViT and Swin share: token stages with a mandatory base and skippable units, the gated
network protocol (``stem``, ``stages``, ``head`` = ``fc(pool(h))``, ``n_units``, ``unit_channels``,
``gate_heads``, ``gating``, ``switchable_bn``, ``num_classes``, ``in_channels``, ``input_size``,
``forward(x, gates, return_features)``, ``forward_from_stem``, ``forward_patterns``), so the
methods, the trie, cost, latency and export see the same shape of model as for the ResNets, and
the torchvision state-dict conversion.

A transformer block is two residual branches, ``h + attn(norm1(h))`` then ``+ mlp(norm2(h))``.
A keep factor ``k [B]`` (tensor gates) scales both branches of each block of its unit,
``h <- h + k * F(h)``: stochastic depth's test-time rule (Huang et al. 2016), which torchvision's
ViT/Swin apply per branch. ``k = 0`` returns ``h`` unchanged (no ReLU is needed here: the
identity is exact), so 0/1 factors give exactly the numbers of the matching ``SkipPattern``.

Stage outputs (``return_features``) and gate-head inputs are ``[B, C, H, W]`` views of the token
map (channels-last memory, no copy): ViT's ``[B, N, D]`` tokens as ``[B, D, N, 1]``, Swin's
``[B, H, W, C]`` as ``[B, C, H, W]``, so ``losses.kl_features`` takes its softmax over channels
per token and the AIG gate (``models.gates.AIGGate``) pools over tokens.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from gatesearch.models.base import check_layout, stage_switch
from gatesearch.models.gated_resnet import Gates, mandatory_blocks
from gatesearch.models.gates import build_gate
from gatesearch.models.norm import UNIT_OFF, UNIT_ON, SwitchableLayerNorm
from gatesearch.patterns import SkipPattern


def split(n: int, gating: str) -> tuple[int, list[list[int]]]:
    """``(n_base, units)`` for a stage of ``n`` shape-keeping blocks: ADN's ``mandatory_blocks(n)``
    for ``stage``, every block its own unit for ``block``, all mandatory for ``none``.
    ``units`` lists block indices."""
    n_base = {"stage": mandatory_blocks(n), "block": 0, "none": n}[gating]
    rest = list(range(n_base, n))
    if gating == "stage":
        return n_base, [rest] if rest else []
    return n_base, [[i] for i in rest]


class TokenStage(nn.Module):
    """``base`` blocks (always run, ``block(h, which)``) then ``units`` (lists of blocks, skippable,
    ``block(h, scale=keep)``), as ``gated_resnet.Stage`` for token maps."""

    def __init__(self, base: list[nn.Module], units: list[list[nn.Module]], unit_offset: int,
                 switchable: bool, as_map: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.base = nn.ModuleList(base)
        self.units = nn.ModuleList(nn.ModuleList(u) for u in units)
        self.unit_offset = unit_offset
        self.switch_unit = unit_offset if switchable and units else None
        self._as_map = as_map

    def _which(self, gates: Gates, batch: int) -> int | torch.Tensor:
        return stage_switch(gates, self.switch_unit, batch, "LN")

    def forward(self, h: torch.Tensor, gates: Gates, first_out: torch.Tensor | None = None) -> torch.Tensor:
        """``first_out``: the protocol's shared prefix; transformer blocks open with a switchable LN,
        so nothing is shared and it must be ``None``."""
        if first_out is not None:
            raise ValueError("transformer stages share no first op between sub-networks")
        which = self._which(gates, h.shape[0])
        for block in self.base:
            h = block(h, which)
        for j, unit in enumerate(self.units):
            u = self.unit_offset + j
            if isinstance(gates, SkipPattern) and gates.skipped[u]:
                continue  # skipped units are never computed
            keep = None  # [B] keep factors on the unit's residual branches (module docstring)
            if isinstance(gates, torch.Tensor):
                keep = gates[:, u]
            elif gates is not None and not isinstance(gates, SkipPattern):
                keep = gates(u, self._as_map(h))
            for block in unit:
                h = block(h, scale=keep)
        return h


def residual(h: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``h + branch``, or ``h + scale * branch`` with ``scale [B]`` (``[1]`` broadcasts), one ``addcmul``."""
    if scale is None:
        return h + branch
    return torch.addcmul(h, branch, scale.to(branch.dtype).view(-1, *([1] * (branch.dim() - 1))))


class GatedTransformer(nn.Module):
    """Base of ``GatedViT`` / ``GatedSwin`` (the ``GatedNet`` protocol's attributes and methods):
    subclasses call ``_setup``, set ``stem``, ``stages`` (``TokenStage``s), ``pool`` (token map ->
    ``[B, C]``) and ``fc``, call ``_finish``, and define ``as_map``.
    ``forward_from_stem`` differs from ``GatedNet``'s in one place: stage outputs are returned as
    ``as_map`` views, so ADN's feature KL is a softmax over channels per token."""

    gating: str
    stem_kind: str
    switchable_bn: bool  # switchable LayerNorm here (the config key is shared with the ResNets)

    def _setup(self, gating: str, stem: str, switchable_bn: bool | None, num_classes: int, in_channels: int,
               input_size: int, gate_downsample: bool | None) -> bool:
        if gate_downsample:
            raise ValueError("transformer units keep their shape (patch merging stays mandatory): "
                             "gate_downsample does not apply")
        switchable_bn = check_layout(gating, stem, switchable_bn, "LN")
        self.gating, self.stem_kind, self.switchable_bn = gating, stem, switchable_bn
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        return switchable_bn

    def _finish(self, unit_channels: list[int], gate_head: str | None, gate_init_keep: float) -> None:
        self.n_units = len(unit_channels)
        self.unit_channels = tuple(unit_channels)
        self.gate_heads = (nn.ModuleList(build_gate(gate_head, c, gate_init_keep) for c in unit_channels)
                           if gate_head else None)

    @staticmethod
    def as_map(h: torch.Tensor) -> torch.Tensor:
        """Token map -> ``[B, C, H, W]`` view (module docstring)."""
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last stage's token map -> logits ``[B, num_classes]``."""
        return self.fc(torch.flatten(self.pool(h), 1))

    def forward(self, x: torch.Tensor, gates: Gates = None, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]`` (``gates`` as ``GatedResNet.forward``);
        with ``return_features`` also each stage's output as a ``[B, C_s, H_s, W_s]`` view."""
        return self.forward_from_stem(self.stem(x), gates, return_features)

    def forward_from_stem(self, h: torch.Tensor, gates: Gates = None, return_features: bool = False,
                          conv1_out: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` after the stem (``h = model.stem(x)``); ``conv1_out`` (the protocol's shared
        prefix) is always ``None`` here."""
        self._check_gates(gates)
        features = []
        for stage in self.stages:
            h = stage(h, gates, conv1_out)
            features.append(self.as_map(h))
        logits = self.head(h)
        return (logits, features) if return_features else logits

    def forward_patterns(self, x: torch.Tensor, patterns: Sequence[Gates], return_features: bool = False
                         ) -> list[torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]]:
        """``[forward(x, p, return_features) for p in patterns]``, the stem (patch embedding) run once."""
        h = self.stem(x)
        return [self.forward_from_stem(h, p, return_features) for p in patterns]

    def _check_gates(self, gates: Gates) -> None:
        if isinstance(gates, SkipPattern) and len(gates) != self.n_units:
            raise ValueError(f"skip pattern {gates} has {len(gates)} units; this model has {self.n_units}")
        if isinstance(gates, torch.Tensor) and (gates.dim() != 2 or gates.shape[1] != self.n_units):
            raise ValueError(f"gates tensor must be [B, {self.n_units}], got {list(gates.shape)}")

    def gate_parameters(self) -> list[nn.Parameter]:
        return [] if self.gate_heads is None else list(self.gate_heads.parameters())


def block_prefixes(model: GatedTransformer) -> list[str]:
    """Module paths of the model's blocks in execution order (base then units, stage by stage)."""
    out = []
    for s, stage in enumerate(model.stages):
        out += [f"stages.{s}.base.{j}" for j in range(len(stage.base))]
        out += [f"stages.{s}.units.{u}.{j}" for u, unit in enumerate(stage.units) for j in range(len(unit))]
    return out


def convert_mapped(model: nn.Module, state_dict: dict[str, torch.Tensor], rename: Callable[[str], str]
                   ) -> dict[str, torch.Tensor]:
    """``state_dict`` (a torchvision model's) with every key renamed by ``rename``, ready for
    ``model.load_state_dict(..., strict=True)``: a key that lands on a ``SwitchableLayerNorm`` is
    copied into both of its sets (``.lns.0``, ``.lns.1``), so either switch state starts from the
    pretrained norm; gate-head keys keep the model's values. A key ``rename`` does not know, a key
    the model lacks, or a model key left without a value raises ``ValueError``."""
    switchable = {name for name, m in model.named_modules() if isinstance(m, SwitchableLayerNorm)}
    own = model.state_dict()
    out = {k: v for k, v in own.items() if k.startswith("gate_heads.")}
    for key, value in state_dict.items():
        try:
            dst = rename(key)
        except KeyError as e:
            raise ValueError(str(e).strip("'\"")) from None
        owner, _, leaf = dst.rpartition(".")
        targets = [f"{owner}.lns.{i}.{leaf}" for i in (UNIT_ON, UNIT_OFF)] if owner in switchable else [dst]
        for t in targets:
            if t not in own or own[t].shape != value.shape:
                raise ValueError(f"torchvision key {key!r} has no place in this model ({t!r})")
            out[t] = value.clone()
    missing = sorted(set(own) - set(out))
    if missing:
        raise ValueError(f"the torchvision state dict leaves {len(missing)} keys unset, e.g. {missing[0]!r}")
    return out
