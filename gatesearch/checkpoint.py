"""Checkpoints: model weights + flat config (+ optimizer state, epoch, metrics, history).

Only tensors, numbers, strings, lists and dicts are stored, so ``torch.load(weights_only=True)``
reads them (no pickled code runs on load). Writes go to a temporary file that replaces the
target atomically: a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gatesearch.config import Config, ConfigError, from_flat, to_flat
from gatesearch.errors import UserError
from gatesearch.models import GatedResNet, create_model
from gatesearch.resolve import check_model

FORMAT = 1


@dataclass
class Checkpoint:
    model: GatedResNet  # in eval mode, on map_location
    config: Config
    epoch: int  # last completed epoch, 0-based
    metrics: dict[str, float]
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    optimizer: dict | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    method_state: dict[str, float] = field(default_factory=dict)
    weights: str = "trained"  # "ema": ``model`` holds the weight EMA (train.ema_decay), ``train_weights`` the optimizer's
    train_weights: dict | None = None


def save_checkpoint(
    path: str | Path, model: nn.Module, cfg: Config, *, epoch: int, metrics: dict[str, float],
    optimizer: torch.optim.Optimizer | None = None, input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None, history: list[dict[str, float]] | None = None,
    method_state: dict[str, float] | None = None, train_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically; ``input_shape``/``num_classes`` default to what the model implies.
    ``train_weights``: when ``model`` is the evaluated weight EMA, the optimizer's own weights (for a
    resume); the file then records ``weights: "ema"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "config": to_flat(cfg),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "input_shape": list(input_shape or _guess_input_shape(model)),
        "num_classes": int(num_classes or model.num_classes),
        "history": history or [],
        "method_state": method_state or {},
        "weights": "trained" if train_weights is None else "ema",
        "train_weights": train_weights,
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk: torch raises RuntimeError around the OSError
        tmp.unlink(missing_ok=True)  # the previous checkpoint at ``path`` stays as it was
        raise UserError(f"checkpoint {path}: cannot be written ({str(e).splitlines()[0][:200] or type(e).__name__}); "
                        "the previous checkpoint is intact") from None
    return path


def _guess_input_shape(model: nn.Module) -> tuple[int, int, int]:
    return (model.in_channels, model.input_size, model.input_size)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a missing or corrupt file is a ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types on a truncated / foreign file
        raise UserError(f"checkpoint {path} is corrupt or not a gatesearch checkpoint ({type(e).__name__})") from None
    _check_fields(path, state)
    try:
        cfg = from_flat({**_legacy_defaults(state["config"]), **state["config"]})
    except ConfigError as e:
        raise UserError(f"checkpoint {path}: stored config is invalid ({e})") from None
    try:
        model = build_model(cfg, state["num_classes"], tuple(state["input_shape"]))
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"checkpoint {path}: weights do not match {cfg.model.name} ({str(e).splitlines()[0]})") from None
    model.to(map_location).eval()
    return Checkpoint(
        model=model, config=cfg, epoch=state["epoch"], metrics=state["metrics"],
        input_shape=tuple(state["input_shape"]), num_classes=state["num_classes"], optimizer=state["optimizer"],
        history=state.get("history", []), method_state=state.get("method_state", {}),
        weights=state.get("weights", "trained"), train_weights=state.get("train_weights"),
    )


def _legacy_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint meant by keys it was written without: before ``model.gate_downsample`` block
    gating kept downsampling blocks mandatory; before ``model.switchable_shortcut_bn`` a mandatory block's
    downsampling shortcut had two switchable BN sets wherever the model had switchable BN."""
    switchable = (is_resnet(str(stored.get("model.name", "resnet20"))) and stored.get("model.gating", "stage") == "stage"
                  and stored.get("model.switchable_bn") is not False)
    return {"model.gate_downsample": False, "model.switchable_shortcut_bn": switchable}


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


# field -> (what it must be, test): what ``save_checkpoint`` writes; a foreign or edited file fails here
_FIELDS: dict[str, tuple[str, Any]] = {
    "config": ("a dict of dotted config keys", lambda v: isinstance(v, dict)),
    "model": ("a state dict of tensors", lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())),
    "num_classes": ("an integer >= 1", lambda v: _is_int(v, 1)),
    "input_shape": ("[C, H, W] of integers >= 1", lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(
        _is_int(x, 1) for x in v)),
    "epoch": ("an integer >= 0", lambda v: _is_int(v, 0)),
    "metrics": ("a dict of numbers", lambda v: isinstance(v, dict)),
    "optimizer": ("an optimizer state dict or None", lambda v: v is None or isinstance(v, dict)),
}


def _check_fields(path: Path, state: Any) -> None:
    """Every field ``load_checkpoint`` reads is present and of the type ``save_checkpoint`` writes."""
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is not a gatesearch checkpoint (holds a {type(state).__name__})")
    for name, (want, ok) in _FIELDS.items():
        if name not in state:
            raise UserError(f"checkpoint {path}: field {name!r} is missing (not a gatesearch checkpoint?)")
        if not ok(state[name]):
            raise UserError(f"checkpoint {path}: field {name!r} must be {want}, got {str(state[name])[:60]!r}")
    for name, kind in (("history", list), ("method_state", dict)):
        if not isinstance(state.get(name, kind()), kind):
            raise UserError(f"checkpoint {path}: field {name!r} must be a {kind.__name__}")


def build_model(cfg: Config, num_classes: int, input_shape: tuple[int, ...]) -> GatedResNet:
    """The model a config describes, for ``num_classes`` outputs and ``input_shape`` (C, H, W) inputs."""
    check_model(cfg.model)  # an unknown name is the one-line ConfigError, not a registry KeyError
    m = cfg.model
    # ResNet-only layout keys (config.ModelConfig rejects them for the other backbones)
    resnet = {"gate_downsample": m.gate_downsample, "zero_init_residual": m.zero_init_residual,
              "switchable_shortcut_bn": m.switchable_shortcut_bn} if is_resnet(m.name) else {}
    return create_model(
        m.name, num_classes, gating=m.gating, stem=m.stem, switchable_bn=m.switchable_bn,
        gate_head=None if m.gate_head == "none" else m.gate_head, in_channels=input_shape[0],
        gate_init_keep=m.gate_init_keep, **resnet,
    )


def is_resnet(name: str) -> bool:
    """A ``GatedResNet`` builder (the ones with block gating of downsampling blocks and zero-init)."""
    return name.startswith("resnet")
