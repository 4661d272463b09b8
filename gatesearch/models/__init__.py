"""Gated networks: models never train; the active sub-network is a forward argument.

``base.GatedNet`` is the protocol every backbone implements (ResNets in ``gated_resnet``,
MobileNetV2 in ``mobilenetv2``, ViT in ``vit``, Swin in ``swin``); ``MODELS`` registers every builder.

The ResNets register in ``gated_resnet``. MobileNetV2, ViT and Swin are built from torchvision modules,
and importing torchvision costs about 1.5 s per process (with the ``torch._dynamo`` it pulls in), which
every Ray trial worker and DDP rank would pay to train a ResNet: their names are registered here, each
to the module whose ``BUILDERS`` holds it, and that module is imported when one is first built.
"""

from __future__ import annotations

import importlib
from typing import Callable

from gatesearch.models.base import GatedNet
from gatesearch.models.gated_resnet import MODELS, GatedResNet, GateFn, Gates, create_model, mandatory_blocks

#: Backbones built from torchvision modules: name -> the module of this package whose ``BUILDERS`` has it.
DEFERRED_MODELS: dict[str, str] = {
    "mobilenet_v2": "mobilenetv2", "mobilenet_v2_x0_5": "mobilenetv2",
    "vit_b_16": "vit", "vit_ti_4": "vit",
    "swin_t": "swin", "swin_nano_2": "swin",
}


def _deferred(name: str, module: str) -> Callable[..., GatedNet]:
    def build(**kw) -> GatedNet:
        return importlib.import_module(f"gatesearch.models.{module}").BUILDERS[name](**kw)

    build.__doc__ = f"``gatesearch.models.{module}.BUILDERS[{name!r}]`` (imported when first built)."
    return build


for _name, _module in DEFERRED_MODELS.items():
    MODELS.add(_name, _deferred(_name, _module))

__all__ = ["DEFERRED_MODELS", "MODELS", "GatedNet", "GatedResNet", "GateFn", "Gates", "create_model", "mandatory_blocks"]
