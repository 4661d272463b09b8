"""Where the names in a ``Config`` meet what they name.

``config.py`` checks types and ranges only: it sits below the models, the methods and the device
profiles (``../shared/DESIGN.md``, floors), so it cannot know which names exist. The names are checked
here, where they are resolved -- ``models.MODELS`` (``checkpoint.build_model``), ``methods.METHODS``
(``train.fit``), ``devices.profiles.DEVICES`` (a ``latency:<device>`` cost axis) -- with the same
one-line ``ConfigError`` naming the dotted key. ``check_names`` runs them all; the CLI, the search
space and ``train.fit`` call it before any work.
"""

from __future__ import annotations

from gatesearch.config import Config, ConfigError, ModelConfig
from gatesearch.devices.profiles import check_cost_axis
from gatesearch.methods import METHODS
from gatesearch.models import MODELS
from gatesearch.models.torchvision_init import TORCHVISION_RESNETS


def check_model(m: ModelConfig) -> None:
    """``model.name`` is a registered builder; ``model.init_from`` has a torchvision layout to load into."""
    if m.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {m.name!r}; known: {', '.join(MODELS.names())}")
    if m.init_from is not None and not (m.name in TORCHVISION_RESNETS and m.stem == "imagenet"):
        raise ConfigError(f"model.init_from: torchvision weights fit {', '.join(TORCHVISION_RESNETS)} with "
                          f"model.stem=imagenet, not {m.name} with stem={m.stem}")


def check_method(name: str) -> None:
    """``method.name`` is a registered method."""
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method {name!r}; known: {', '.join(METHODS.names())}")


def check_names(cfg: Config) -> Config:
    """Every name ``cfg`` holds resolves (model, its torchvision init, method, the score's cost-axis
    device); returns ``cfg`` so a caller can write ``cfg = check_names(from_flat(...))``."""
    check_model(cfg.model)
    check_method(cfg.method.name)
    check_cost_axis(cfg.train.score_cost, "train.score_cost")
    return cfg
