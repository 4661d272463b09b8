"""Skip pattern -> a physically pruned network -> TorchScript or ONNX.

``prune`` builds a plain ``nn.Module`` that holds only the blocks the pattern runs, in order,
with each mandatory block's switchable BN reduced to the one set the pattern selects. Its
forward has no gates and no Python branch on tensors, so tracing captures it exactly, and
its parameter count is ``count_params(model, pattern)``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from gatesearch.errors import UserError
from gatesearch.models import GatedResNet
from gatesearch.models.norm import UNIT_OFF, UNIT_ON, PlainNorm, SwitchableBatchNorm2d
from gatesearch.patterns import SkipPattern
from gatesearch.preflight import atomic_target

FORMATS = ("onnx", "torchscript")


class PrunedResNet(nn.Module):
    """``stem -> blocks -> pool -> fc``: one sub-network of a ``GatedResNet``, gates removed."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], pool: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.pool = pool
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def _bake(block: nn.Module, which: int) -> nn.Module:
    """A copy of ``block`` whose switchable norms are plain norms holding BN set ``which``."""
    block = copy.deepcopy(block)
    for parent in list(block.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SwitchableBatchNorm2d):
                fixed = PlainNorm(child.bns[which].num_features)
                fixed.bn = child.bns[which]
                setattr(parent, name, fixed)
    return block


def prune(model: GatedResNet, pattern: SkipPattern) -> PrunedResNet:
    """The sub-network ``pattern`` selects, as a standalone module in eval mode (weights copied)."""
    if len(pattern) != model.n_units:
        raise UserError(f"skip pattern {pattern} has {len(pattern)} units; this model has {model.n_units}")
    blocks: list[nn.Module] = []
    for stage in model.stages:
        sw = stage.switch_unit
        which = UNIT_OFF if sw is not None and pattern.skipped[sw] else UNIT_ON
        blocks += [_bake(b, which) for b in stage.base]
        for j, unit in enumerate(stage.units):
            if not pattern.skipped[stage.unit_offset + j]:
                blocks += [_bake(b, UNIT_ON) for b in unit]
    net = PrunedResNet(copy.deepcopy(model.stem), blocks, copy.deepcopy(model.pool), copy.deepcopy(model.fc))
    return net.eval()


def export(model: GatedResNet, pattern: SkipPattern, fmt: str, out: str | Path,
           input_shape: tuple[int, int, int], batch: int = 1) -> Path:
    """Write the pruned sub-network to ``out`` as ``onnx`` (input ``x``, output ``logits``, dynamic
    batch) or ``torchscript`` (traced)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = prune(model, pattern).cpu()
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
