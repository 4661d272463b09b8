"""Vision Transformers (Dosovitskiy et al. 2021) with skippable encoder blocks.

ADN split (Kang & Lee, Sec. 4.1): "Since ViT does not define residual stages, we divide 12
encoder blocks into 4 groups ... and designate the last encoder block of each group as a
skippable sub-path" (the official code, ``models/vision_transformer.py``, marks block ``i``
skippable when ``(i + 1) % 3 == 0``). So ``gating="stage"``: 4 stages of 3 blocks, the first two
mandatory (switchable LayerNorm, Sec. 3.4) and the third the stage's unit; ``gating="block"``:
every block its own unit (12 units); ``gating="none"``: all mandatory.

Parameter layout: torchvision's ``VisionTransformer`` / ``EncoderBlock`` (``ln_1``,
``self_attention.in_proj_weight`` ..., ``mlp.0`` / ``mlp.3``), so its state dicts load through
``torchvision_key_map`` (see ``load_torchvision``). Attention runs as
``F.scaled_dot_product_attention`` on ``nn.MultiheadAttention``'s parameters: the same numbers,
exportable, and counted by ``gatesearch.flops``.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import MLPBlock

from gatesearch.models.norm import UNIT_ON, PlainLayerNorm, SwitchableLayerNorm
from gatesearch.models.transformer import GatedTransformer, TokenStage, block_prefixes, convert_mapped, residual, split

IMAGE_SIZES = {"cifar": 32, "imagenet": 224}


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight [3D, D]``,
    ``in_proj_bias [3D]``, ``out_proj``) computed by ``scaled_dot_product_attention``. Traced as one
    layer of 3 kernels: input projection, fused attention, output projection (``models/base.py``)."""

    attention_kernels = 3

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D]`` -> ``[B, N, D]``."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, D / heads]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    """torchvision's ``EncoderBlock`` (pre-norm): ``h + attn(ln_1(h))``, then ``+ mlp(ln_2(h))``.
    ``which`` picks the switchable LN set; ``scale [B]`` multiplies both residual branches."""

    residual_adds = 2  # elementwise additions per call (latency trace)
    downsample = None  # identity shortcut: a skipped unit returns its input (blocks.skipped)

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm: Callable[..., nn.Module], eps: float) -> None:
        super().__init__()
        self.ln_1 = norm(dim, eps=eps)
        self.self_attention = SelfAttention(dim, num_heads)
        self.ln_2 = norm(dim, eps=eps)
        self.mlp = MLPBlock(dim, mlp_dim, 0.0)

    def forward(self, h: torch.Tensor, which: int | torch.Tensor = UNIT_ON, scale: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``h [B, N, D]`` -> ``[B, N, D]``."""
        h = residual(h, self.self_attention(self.ln_1(h, which)), scale)
        return residual(h, self.mlp(self.ln_2(h, which)), scale)


class ClassTokenEmbed(nn.Module):
    """``[B, D, h, w]`` patch embeddings -> ``[B, 1 + h*w, D]`` tokens: class token first, plus
    learned position embeddings (torchvision's ``class_token`` and ``encoder.pos_embedding``)."""

    def __init__(self, dim: int, n_patches: int) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, n_patches + 1, dim).normal_(std=0.02))  # from BERT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # [B, h*w, D]
        cls = self.class_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embedding


class ClassTokenPool(nn.Module):
    """Final LayerNorm of the class token: ``[B, N, D]`` -> ``[B, D]`` (LN is per token, so normalising
    the class token alone equals torchvision's ``encoder.ln`` on all tokens then ``x[:, 0]``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.ln(h[:, 0])


class GatedViT(GatedTransformer):
    """A ViT whose ``depth`` encoder blocks form ``groups`` stages (ADN's grouping, module docstring)."""

    def __init__(
        self, patch_size: int, dim: int, depth: int, num_heads: int, mlp_dim: int, num_classes: int,
        gating: str = "stage", stem: str = "imagenet", switchable_bn: bool | None = None,
        gate_head: str | None = None, in_channels: int = 3, groups: int = 4, eps: float = 1e-6,
        gate_init_keep: float = 0.9, gate_downsample: bool | None = None,
    ) -> None:
        super().__init__()
        if stem not in IMAGE_SIZES:
            raise ValueError(f"stem must be one of {tuple(IMAGE_SIZES)}, got {stem!r}")
        image_size = IMAGE_SIZES[stem]
        switchable = self._setup(gating, stem, switchable_bn, num_classes, in_channels, image_size, gate_downsample)
        if depth % groups:
            raise ValueError(f"{depth} encoder blocks do not split into {groups} equal groups")
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        conv_proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.stem = nn.Sequential(conv_proj, ClassTokenEmbed(dim, (image_size // patch_size) ** 2))
        per_group = depth // groups
        stages, unit_channels = [], []
        for _ in range(groups):
            n_base, unit_idx = split(per_group, gating)
            base_norm = SwitchableLayerNorm if switchable else PlainLayerNorm
            base = [EncoderBlock(dim, num_heads, mlp_dim, base_norm, eps) for _ in range(n_base)]
            units = [[EncoderBlock(dim, num_heads, mlp_dim, PlainLayerNorm, eps) for _ in u] for u in unit_idx]
            stages.append(TokenStage(base, units, len(unit_channels), switchable, self.as_map))
            unit_channels += [dim] * len(units)
        self.stages = nn.ModuleList(stages)
        self.pool = ClassTokenPool(dim, eps)
        self.fc = nn.Linear(dim, num_classes)
        self._finish(unit_channels, gate_head, gate_init_keep)
        self._init_weights(conv_proj)

    def _init_weights(self, conv_proj: nn.Conv2d) -> None:
        """torchvision's ``VisionTransformer`` init: LeCun-normal patch projection, zero head."""
        fan_in = conv_proj.in_channels * conv_proj.kernel_size[0] * conv_proj.kernel_size[1]
        nn.init.trunc_normal_(conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(conv_proj.bias)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def as_map(h: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` tokens -> ``[B, D, N, 1]`` view (channels-last memory)."""
        return h.transpose(1, 2).unsqueeze(-1)


def torchvision_key_map(model: GatedViT) -> Callable[[str], str]:
    """torchvision ``VisionTransformer`` key -> this model's key (before switchable-LN expansion):

    ``conv_proj.*`` -> ``stem.0.*``; ``class_token``, ``encoder.pos_embedding`` -> ``stem.1.*``;
    ``encoder.layers.encoder_layer_{i}.*`` -> the ``i``-th block in execution order
    (``stages.{s}.base.{j}.*`` or ``stages.{s}.units.{u}.{j}.*``); ``encoder.ln.*`` -> ``pool.ln.*``;
    ``heads.head.*`` -> ``fc.*``. A switchable LN takes the pretrained LN into both of its sets.
    """
    blocks = block_prefixes(model)

    def rename(key: str) -> str:
        m = re.fullmatch(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)", key)
        if m and int(m.group(1)) < len(blocks):
            return f"{blocks[int(m.group(1))]}.{m.group(2)}"
        fixed = {"class_token": "stem.1.class_token", "encoder.pos_embedding": "stem.1.pos_embedding"}
        if key in fixed:
            return fixed[key]
        for src, dst in (("conv_proj.", "stem.0."), ("encoder.ln.", "pool.ln."), ("heads.head.", "fc.")):
            if key.startswith(src):
                return dst + key[len(src):]
        raise KeyError(f"unexpected torchvision ViT key {key!r}")

    return rename


def convert_torchvision_state_dict(model: GatedViT, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ``vit_*`` state dict as this model's, through ``torchvision_key_map``; loads
    with ``model.load_state_dict(..., strict=True)`` (see ``transformer.convert_mapped``)."""
    return convert_mapped(model, state_dict, torchvision_key_map(model))


def load_torchvision(model: GatedViT, state_dict: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(convert_torchvision_state_dict(model, state_dict), strict=True)``."""
    model.load_state_dict(convert_torchvision_state_dict(model, state_dict), strict=True)


def _builder(patch: int, dim: int, depth: int, heads: int, mlp_dim: int, default_stem: str, doc: str
             ) -> Callable[..., GatedViT]:
    def build(num_classes: int = 1000, stem: str = default_stem, **kw) -> GatedViT:
        return GatedViT(patch, dim, depth, heads, mlp_dim, num_classes, stem=stem, **kw)

    build.__doc__ = doc
    return build


#: This module's builders; ``models/__init__.py`` registers each name in ``MODELS`` and imports this
#: module when one is first built.
BUILDERS: dict[str, Callable[..., GatedViT]] = {
    "vit_b_16": _builder(16, 768, 12, 12, 3072, "imagenet",
                         "ViT-B/16 (torchvision ``vit_b_16``): 12 blocks, dim 768, 12 heads, MLP 3072."),
    "vit_ti_4": _builder(4, 192, 12, 3, 768, "cifar",
                         "ViT-Ti/4 for 32x32 inputs: DeiT-Ti's shape (12 blocks, dim 192, 3 heads, MLP 768), "
                         "patch 4 (64 tokens + class token)."),
}
