"""Gated residual networks: models never train; the active sub-network is a forward argument."""

from gatesearch.models import swin, vit  # noqa: F401 - registers vit_* / swin_* in MODELS
from gatesearch.models.gated_resnet import MODELS, GatedResNet, GateFn, Gates, create_model, mandatory_blocks

__all__ = ["MODELS", "GatedResNet", "GateFn", "Gates", "create_model", "mandatory_blocks"]
