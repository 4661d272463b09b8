"""Skip pattern -> a physically pruned network -> TorchScript or ONNX.

``prune`` builds a plain ``nn.Module`` that holds only the blocks the pattern runs, in order,
with each mandatory block's switchable BN reduced to the one set the pattern selects; a skipped
downsampling unit (``model.gate_downsample``) leaves its shortcut, ``relu(shortcut(x))``. Its
forward has no gates and no Python branch on tensors, so tracing captures it exactly, and
its parameter count is ``count_params(model, pattern)``. With ``keep`` (one factor per unit) every
block of a run unit scales its residual branch by its unit's constant factor: the calibrated full
network of Gated Depth / stochastic depth (``methods.base.calibrated``) as a static graph.

Deploy bundles (one ONNX file per menu entry + ``bundle.json``) are written by ``gatesearch.bundle``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from gatesearch.errors import UserError
from gatesearch.models import GatedNet
from gatesearch.models.norm import UNIT_OFF, UNIT_ON, PlainNorm, SwitchableBatchNorm2d
from gatesearch.patterns import SkipPattern
from gatesearch.preflight import atomic_target

FORMATS = ("onnx", "torchscript")


class PrunedNet(nn.Module):
    """``stem -> blocks -> head``: one sub-network of a ``GatedNet``, gates removed. ``head`` is a
    copy of the model without its stem, stages and gate heads (``GatedNet.head`` uses none of them)."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head.head(self.blocks(self.stem(x)))


PrunedResNet = PrunedNet  # the name before other backbones


def _head_copy(model: GatedNet) -> nn.Module:
    """A deep copy of ``model`` holding only the modules its ``head`` uses (not the stem, the
    stages or the gate heads), so the pruned net carries no weight it never runs."""
    shell = copy.copy(model)  # shallow: then replace the module table before deep-copying
    shell._modules = {n: (None if n in ("stem", "stages", "gate_heads") else m) for n, m in model._modules.items()}
    return copy.deepcopy(shell)


class _Shortcut(nn.Module):
    """A skipped downsampling block: ``relu(shortcut(x))``, its residual branch removed."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.downsample = block.downsample
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.downsample(x))


class _Scaled(nn.Module):
    """A run unit's block with its residual branch scaled by a constant keep factor ``p_s``:
    ``block(x, scale=[p_s])``, the call ``Stage.forward`` makes under ``[1, n_units]`` keep gates."""

    def __init__(self, block: nn.Module, keep: float) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("keep", torch.tensor([float(keep)]))  # [1], broadcast over the batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, scale=self.keep)


def _bake(block: nn.Module, which: int) -> nn.Module:
    """A copy of ``block`` whose switchable norms are plain norms holding set ``which``
    (``SwitchableBatchNorm2d`` here; any other norm with a ``bake(which) -> nn.Module`` method)."""
    block = copy.deepcopy(block)
    for parent in list(block.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SwitchableBatchNorm2d):
                fixed = PlainNorm(child.bns[which].num_features)
                fixed.bn = child.bns[which]
                setattr(parent, name, fixed)
            elif callable(getattr(child, "bake", None)):  # other switchable norms (e.g. LayerNorm) bake themselves
                setattr(parent, name, child.bake(which))
    return block


def prune(model: GatedNet, pattern: SkipPattern, keep: Sequence[float] | None = None) -> PrunedNet:
    """The sub-network ``pattern`` selects, as a standalone module in eval mode (weights copied).
    ``keep``: per-unit keep factors in (0, 1] scaling each run unit's residual branches (equal to
    ``model(x, torch.tensor([keep]))`` for the super-net pattern; the mandatory blocks then use their
    "unit runs" norm set, as ``models.base.stage_switch`` gives for any factor > 0)."""
    if len(pattern) != model.n_units:
        raise UserError(f"skip pattern {pattern} has {len(pattern)} units; this model has {model.n_units}")
    if keep is not None and (len(keep) != model.n_units or not all(0.0 < k <= 1.0 for k in keep)):
        raise UserError(f"keep factors {list(keep)}: need {model.n_units} values in (0, 1]")
    blocks: list[nn.Module] = []
    for stage in model.stages:
        sw = stage.switch_unit
        which = UNIT_OFF if sw is not None and pattern.skipped[sw] else UNIT_ON
        blocks += [_bake(b, which) for b in stage.base]
        for j, unit in enumerate(stage.units):
            u = stage.unit_offset + j
            if not pattern.skipped[u] and keep is not None:
                blocks += [_Scaled(_bake(b, UNIT_ON), keep[u]) for b in unit]
            elif not pattern.skipped[u]:
                blocks += [_bake(b, UNIT_ON) for b in unit]
            else:  # a skipped downsampling unit still changes the shape: keep its shortcut only
                blocks += [_Shortcut(_bake(b, UNIT_ON)) for b in unit if b.downsample is not None]
    net = PrunedNet(copy.deepcopy(model.stem), blocks, _head_copy(model))
    return net.eval()


def export(model: GatedNet, pattern: SkipPattern, fmt: str, out: str | Path,
           input_shape: tuple[int, int, int], batch: int = 1, keep: Sequence[float] | None = None) -> Path:
    """Write the pruned sub-network (``prune(model, pattern, keep)``) to ``out`` as ``onnx`` (input
    ``x``, output ``logits``, dynamic batch) or ``torchscript`` (traced)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = prune(model, pattern, keep).cpu()
    x = torch.randn(batch, *input_shape)
    tmp = atomic_target(out)  # a failed export leaves no half-written model at ``out``
    try:
        with torch.no_grad():
            if fmt == "torchscript":
                torch.jit.trace(net, x).save(str(tmp))
            else:
                torch.onnx.export(net, (x,), str(tmp), input_names=["x"], output_names=["logits"],
                                  dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
