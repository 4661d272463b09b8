"""Gated networks: models never train; the active sub-network is a forward argument.

``base.GatedNet`` is the protocol every backbone implements (ResNets in ``gated_resnet``,
MobileNetV2 in ``mobilenetv2``, ViT in ``vit``, Swin in ``swin``); ``MODELS`` registers every builder.
"""

from gatesearch.models import mobilenetv2 as _mobilenetv2  # noqa: F401  (registers its builders)
from gatesearch.models import swin, vit  # noqa: F401 - registers vit_* / swin_* in MODELS
from gatesearch.models.base import GatedNet
from gatesearch.models.gated_resnet import MODELS, GatedResNet, GateFn, Gates, create_model, mandatory_blocks

__all__ = ["MODELS", "GatedNet", "GatedResNet", "GateFn", "Gates", "create_model", "mandatory_blocks"]
