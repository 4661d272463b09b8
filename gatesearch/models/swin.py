"""Swin Transformers (Liu et al. 2021) whose stages split into a mandatory and a skippable sub-path.

ADN split (Kang & Lee, Sec. 3.1 and 4.1; the official ``models/swin_transformer.py``,
``depths_base=[1, 1, 3, 1]`` for Swin-T): the first ``mandatory_blocks(n)`` blocks of a stage of
``n`` are mandatory, the rest form the stage's unit. The patch merging that opens stages 2-4
belongs to that stage's mandatory sub-path: the official code gives its LayerNorm a skip-aware
second set switched by the *following* stage's flag, and so does this one. ``gating="block"``:
every Swin block its own unit (patch merging changes the shape and stays mandatory).

Swin-T's MACs at 224x224 (``tests/test_swin.py``): super-net 4.49 G; the official split
``[1, 1, 3, 1]`` gives a base-net of 2.34 G, the Gated Depth paper's Table 1 figure for
Swin-ADN (T); ADN's own Table 1 says 2.69 G, which is the split ``mandatory=(1, 1, 4, 1)``
(only two of stage 3's six blocks skippable), not the one its code ships.

Parameter layout: torchvision's ``SwinTransformer`` (``features.*``, its ``ShiftedWindowAttention``
and ``MLP`` modules are used as they are), so its state dicts load through ``torchvision_key_map``.
torchvision's per-block stochastic depth (0.2 for ``swin_t``) is not built in: depth dropping is
a training method here (``stochastic_depth``), and ADN trains its base-net without it (Sec. 4.1).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention
from torchvision.ops.misc import MLP, Permute

from gatesearch.models.norm import UNIT_ON, PlainLayerNorm, SwitchableLayerNorm
from gatesearch.models.transformer import GatedTransformer, TokenStage, block_prefixes, convert_mapped, residual, split
from gatesearch.models.vit import IMAGE_SIZES


class WindowAttention(ShiftedWindowAttention):
    """torchvision's ``ShiftedWindowAttention`` as it is (parameters, forward), with the cost models'
    markers (``models/base.py``): its QK^T, bias add, softmax, PV, shift and window-partition copies are
    8 kernels, and it reads its projections' weights functionally (no hook sees them run)."""

    attention_kernels = 8
    reads_children_weights = True


class SwinBlock(nn.Module):
    """torchvision's ``SwinTransformerBlock``: ``h + attn(norm1(h))``, then ``+ mlp(norm2(h))`` on
    ``[B, H, W, C]``. ``which`` picks the switchable LN set; ``scale [B]`` multiplies both branches."""

    residual_adds = 2  # elementwise additions per call (latency trace)
    downsample = None  # identity shortcut: a skipped unit returns its input (blocks.skipped)

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float,
                 norm: Callable[..., nn.Module], eps: float) -> None:
        super().__init__()
        self.norm1 = norm(dim, eps=eps)
        self.attn = WindowAttention(dim, [window, window], [shift, shift], num_heads)
        self.norm2 = norm(dim, eps=eps)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU, inplace=None, dropout=0.0)

    def forward(self, h: torch.Tensor, which: int | torch.Tensor = UNIT_ON, scale: torch.Tensor | None = None
                ) -> torch.Tensor:
        h = residual(h, self.attn(self.norm1(h, which)), scale)
        return residual(h, self.mlp(self.norm2(h, which)), scale)


class PatchMerging(nn.Module):
    """``[B, H, W, C]`` -> ``[B, H/2, W/2, 2C]``: each 2x2 neighbourhood concatenated (torchvision's
    order: (0,0), (1,0), (0,1), (1,1)), normalised, linearly reduced; odd sizes are zero-padded."""

    def __init__(self, dim: int, norm: Callable[..., nn.Module], eps: float) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm(4 * dim, eps=eps)

    def forward(self, h: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        H, W = h.shape[-3], h.shape[-2]
        h = F.pad(h, (0, 0, 0, W % 2, 0, H % 2))
        h = torch.cat([h[..., 0::2, 0::2, :], h[..., 1::2, 0::2, :], h[..., 0::2, 1::2, :], h[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(h, which))


class MeanPool(nn.Module):
    """Final LayerNorm, then the mean over positions: ``[B, H, W, C]`` -> ``[B, C]``."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h).mean((1, 2))


class GatedSwin(GatedTransformer):
    """A Swin Transformer of ``len(depths)`` stages; ``mandatory`` overrides ADN's per-stage split
    (``gating="stage"`` only)."""

    def __init__(
        self, patch_size: int, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window: int,
        num_classes: int, gating: str = "stage", stem: str = "imagenet", switchable_bn: bool | None = None,
        gate_head: str | None = None, in_channels: int = 3, mlp_ratio: float = 4.0, eps: float = 1e-5,
        mandatory: Sequence[int] | None = None, gate_init_keep: float = 0.9, gate_downsample: bool | None = None,
    ) -> None:
        super().__init__()
        if stem not in IMAGE_SIZES:
            raise ValueError(f"stem must be one of {tuple(IMAGE_SIZES)}, got {stem!r}")
        image_size = IMAGE_SIZES[stem]
        switchable = self._setup(gating, stem, switchable_bn, num_classes, in_channels, image_size, gate_downsample)
        if mandatory is not None and (gating != "stage" or len(mandatory) != len(depths)
                                      or not all(0 <= m <= n for m, n in zip(mandatory, depths))):
            raise ValueError(f"mandatory {list(mandatory)} needs gating='stage' and one count <= depth per stage")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size),
                                  Permute([0, 2, 3, 1]), nn.LayerNorm(embed_dim, eps=eps))
        stages, unit_channels = [], []
        base_norm = SwitchableLayerNorm if switchable else PlainLayerNorm
        for s, (n, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**s
            n_base, unit_idx = split(n, gating)
            if mandatory is not None:
                n_base, unit_idx = mandatory[s], [list(range(mandatory[s], n))] if mandatory[s] < n else []

            def block(i: int, norm: Callable[..., nn.Module], dim: int = dim, heads: int = heads) -> SwinBlock:
                return SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, norm, eps)

            base: list[nn.Module] = [PatchMerging(dim // 2, base_norm, eps)] if s > 0 else []
            base += [block(i, base_norm) for i in range(n_base)]
            units = [[block(i, PlainLayerNorm) for i in u] for u in unit_idx]
            stages.append(TokenStage(base, units, len(unit_channels), switchable, self.as_map))
            unit_channels += [dim] * len(units)
        self.stages = nn.ModuleList(stages)
        num_features = embed_dim * 2 ** (len(depths) - 1)
        self.pool = MeanPool(num_features, eps)
        self.fc = nn.Linear(num_features, num_classes)
        self._finish(unit_channels, gate_head, gate_init_keep)
        for m in self.modules():  # torchvision's SwinTransformer init (gate heads keep their own)
            if isinstance(m, nn.Linear) and not _inside(m, self.gate_heads):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def as_map(h: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` -> ``[B, C, H, W]`` view (channels-last memory)."""
        return h.permute(0, 3, 1, 2)


def _inside(m: nn.Module, parent: nn.Module | None) -> bool:
    return parent is not None and any(m is x for x in parent.modules())


def torchvision_key_map(model: GatedSwin) -> Callable[[str], str]:
    """torchvision ``SwinTransformer`` key -> this model's key (before switchable-LN expansion):

    ``features.0.*`` (patch embedding) -> ``stem.*``; ``features.{2s+1}.{j}.*`` (block ``j`` of stage
    ``s``) -> that block in execution order; ``features.{2s}.*`` (patch merging before stage ``s``)
    -> ``stages.{s}.base.0.*``; ``norm.*`` -> ``pool.norm.*``; ``head.*`` -> ``fc.*``.
    A switchable LN takes the pretrained LN into both of its sets.
    """
    per_stage: list[list[str]] = []
    for s in range(len(model.stages)):
        prefixes = [p for p in block_prefixes(model) if p.startswith(f"stages.{s}.")]
        per_stage.append(prefixes[1:] if s > 0 else prefixes)  # the merging opens stages 2-4

    def rename(key: str) -> str:
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        i, rest = (int(m.group(1)), m.group(2)) if m else (-1, "")
        if i == 0:
            return f"stem.{rest}"
        if i > 0 and i % 2 and (i - 1) // 2 < len(per_stage):
            j, _, tail = rest.partition(".")
            if j.isdigit() and int(j) < len(per_stage[(i - 1) // 2]):
                return f"{per_stage[(i - 1) // 2][int(j)]}.{tail}"
        elif i > 0 and i % 2 == 0 and i // 2 < len(per_stage):
            return f"stages.{i // 2}.base.0.{rest}"
        for src, dst in (("norm.", "pool.norm."), ("head.", "fc.")):
            if key.startswith(src):
                return dst + key[len(src):]
        raise KeyError(f"unexpected torchvision Swin key {key!r}")

    return rename


def convert_torchvision_state_dict(model: GatedSwin, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ``swin_*`` (v1) state dict as this model's, through ``torchvision_key_map``; loads
    with ``model.load_state_dict(..., strict=True)`` (see ``transformer.convert_mapped``)."""
    return convert_mapped(model, state_dict, torchvision_key_map(model))


def load_torchvision(model: GatedSwin, state_dict: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(convert_torchvision_state_dict(model, state_dict), strict=True)``."""
    model.load_state_dict(convert_torchvision_state_dict(model, state_dict), strict=True)


def _builder(patch: int, embed: int, depths: list[int], heads: list[int], window: int, default_stem: str,
             doc: str) -> Callable[..., GatedSwin]:
    def build(num_classes: int = 1000, stem: str = default_stem, **kw) -> GatedSwin:
        return GatedSwin(patch, embed, depths, heads, window, num_classes, stem=stem, **kw)

    build.__doc__ = doc
    return build


#: This module's builders; ``models/__init__.py`` registers each name in ``MODELS`` and imports this
#: module when one is first built.
BUILDERS: dict[str, Callable[..., GatedSwin]] = {
    "swin_t": _builder(4, 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, "imagenet",
                       "Swin-T (torchvision ``swin_t``): patch 4, dim 96, depths [2, 2, 6, 2], window 7."),
    "swin_nano_2": _builder(2, 32, [2, 2, 2, 2], [1, 2, 4, 8], 4, "cifar",
                            "A tiny Swin for 32x32 inputs: patch 2 (16x16 tokens), dim 32, depths [2, 2, 2, 2], "
                            "window 4."),
}
