"""Start a ``GatedResNet`` from a torchvision ResNet state dict (``model.init_from``).

The probabilistic-gates paper fine-tunes pretrained ResNets ("We train for 100 epochs from a
pretrained model", ``002_...txt`` Sec. 4.1.1; "the pretrained models provided by TorchVision",
Sec. S4); ADN and Gated Depth train from scratch. The key mapping, torchvision -> GatedResNet
(imagenet stem; ``s`` = stage, ``i`` = block index within the stage, ``m`` = the stage's number
of mandatory blocks):

    conv1 / bn1                          -> stem.0 / stem.1
    layer{s+1}.{i}.conv{n} / bn{n}       -> stages.{s}.base.{i}.conv{n} / bn{n}     (i < m)
                                            stages.{s}.units.0.{i-m}.conv{n} / ...   (i >= m, gating=stage:
                                                                                      one unit per stage)
                                            stages.{s}.units.{i-m}.0.conv{n} / ...   (i >= m, gating=block:
                                                                                      one unit per block)
    layer{s+1}.{i}.downsample.0 / .1     -> ... .downsample.conv / .downsample.bn
    fc                                   -> fc

A BatchNorm maps to ``<block>.bn{n}.bn`` (``PlainNorm``), or to **both** sets
``<block>.bn{n}.bns.0`` and ``.bns.1`` of a ``SwitchableBatchNorm2d``: the "unit runs" and the
"unit skipped" set start from the same pretrained statistics and affine. Gate heads (probgates)
have no torchvision counterpart and keep their own initialisation. ``num_batches_tracked`` is
optional (older torchvision files lack it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from gatesearch.errors import UserError
from gatesearch.models.blocks import Bottleneck
from gatesearch.models.gated_resnet import GatedResNet
from gatesearch.models.norm import PlainNorm, SwitchableBatchNorm2d

#: The registered models whose layout torchvision's ``resnet18/34/50/101`` share.
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _norm(out: dict[str, list[str]], tv: str, module: nn.Module, ours: str) -> None:
    """Map the torchvision BatchNorm ``tv`` to every BN set of our norm ``module`` at ``ours``."""
    if isinstance(module, SwitchableBatchNorm2d):
        targets = [f"{ours}.bns.{k}" for k in range(len(module.bns))]
    elif isinstance(module, PlainNorm):
        targets = [f"{ours}.bn"]
    else:
        targets = [ours]
    for leaf in _BN_LEAVES:
        out[f"{tv}.{leaf}"] = [f"{t}.{leaf}" for t in targets]


def torchvision_key_map(model: GatedResNet) -> dict[str, list[str]]:
    """Every torchvision ResNet key -> the ``model.state_dict()`` keys it initialises (module docstring)."""
    if model.stem_kind != "imagenet":
        raise ValueError("torchvision ResNets have the imagenet stem (7x7 conv + max-pool)")
    out: dict[str, list[str]] = {"conv1.weight": ["stem.0.weight"]}
    _norm(out, "bn1", model.stem[1], "stem.1")
    for s, stage in enumerate(model.stages):
        blocks = [(f"stages.{s}.base.{i}", b) for i, b in enumerate(stage.base)]
        blocks += [(f"stages.{s}.units.{j}.{k}", b) for j, unit in enumerate(stage.units) for k, b in enumerate(unit)]
        for i, (ours, block) in enumerate(blocks):
            tv = f"layer{s + 1}.{i}"
            for n in range(1, 4 if isinstance(block, Bottleneck) else 3):
                out[f"{tv}.conv{n}.weight"] = [f"{ours}.conv{n}.weight"]
                _norm(out, f"{tv}.bn{n}", getattr(block, f"bn{n}"), f"{ours}.bn{n}")
            if block.downsample is not None:
                out[f"{tv}.downsample.0.weight"] = [f"{ours}.downsample.conv.weight"]
                _norm(out, f"{tv}.downsample.1", block.downsample.bn, f"{ours}.downsample.bn")
    out["fc.weight"], out["fc.bias"] = ["fc.weight"], ["fc.bias"]
    return out


def load_torchvision_state(model: GatedResNet, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy a torchvision ResNet ``state`` into ``model`` (in place). Strict: every torchvision key
    is used and every model tensor except the gate heads' is set; a mismatch is one ``UserError``."""
    mapping = torchvision_key_map(model)
    where = f"model.init_from: {source}"
    missing = [k for k in mapping if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in mapping]
    if missing or unexpected:
        first = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which this model does not"
        raise UserError(f"{where} is not a torchvision state dict of this layout ({first}; "
                        f"{len(missing)} missing, {len(unexpected)} unexpected keys)")
    ours = model.state_dict()
    covered = {t for targets in mapping.values() for t in targets}
    uncovered = [k for k in ours if k not in covered and not k.startswith("gate_heads.")]
    if uncovered:  # a layout this mapping does not know: fail before half-loading
        raise ValueError(f"no torchvision key maps to {uncovered[0]}")
    new = dict(ours)
    for tv, targets in mapping.items():
        if tv not in state:
            continue
        for t in targets:
            if state[tv].shape != ours[t].shape:
                raise UserError(f"{where}: {tv} has shape {list(state[tv].shape)}, {t} needs {list(ours[t].shape)} "
                                f"(a different model.name or number of classes?)")
            new[t] = state[tv]
    model.load_state_dict(new, strict=True)


def load_torchvision_file(model: GatedResNet, path: str | Path) -> None:
    """``load_torchvision_state`` from a ``.pth`` file holding the state dict (``torch.save(tv_model.state_dict())``;
    read with ``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model.init_from: {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types on a foreign file
        raise UserError(f"model.init_from: {p} is not a readable state dict ({type(e).__name__})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.init_from: {p} must hold a state dict (name -> tensor), as torchvision's .pth files do")
    load_torchvision_state(model, state, str(p))
