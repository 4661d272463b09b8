"""Where the names in a ``Config`` meet what they name.

``config.py`` checks types and ranges only: it sits below the models, the methods and the device
profiles (the floors of the project's DESIGN.md), so it cannot know which names exist. The names are checked
here, where they are resolved -- ``models.MODELS`` (``checkpoint.build_model``), ``methods.METHODS``
(``train.fit``), ``devices.profiles.DEVICES`` (a ``latency:<device>`` cost axis) -- with the same
one-line ``ConfigError`` naming the dotted key. ``check_names`` runs them all; the CLI, the search
space and ``train.fit`` call it before any work.

The keys whose range depends on the model (``method.adn.feature_kl_stages``, ``method.adn.output_kl_top_k``,
``method.plain.train_pattern``, ``method.probgates.unit_targets``) and whether the model takes the data's
images at all are checked here too, on the model built on PyTorch's ``meta`` device (shapes only, no
memory, no arithmetic): a ViT built for 224x224 fed 8x8 digits fails in its first forward, after the
data is read and the MLflow run is open, unless it fails here.
"""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gatesearch.config import Config, ConfigError, DataConfig, ModelConfig
from gatesearch.devices.profiles import check_cost_axis
from gatesearch.methods import METHODS
from gatesearch.models import MODELS, create_model
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
    device) and the model takes the data and the method's per-model keys (``check_fits``); returns
    ``cfg`` so a caller can write ``cfg = check_names(from_flat(...))``."""
    check_model(cfg.model)
    check_method(cfg.method.name)
    check_cost_axis(cfg.train.score_cost, "train.score_cost")
    check_fits(cfg)
    return cfg


@dataclass(frozen=True)
class ModelFacts:
    """What a model's layout fixes: ``n_units`` (letters of a skip pattern), ``n_stages`` (feature maps
    ``forward(..., return_features=True)`` returns), ``gate_heads`` (learned gates: inference strategies)."""

    n_units: int
    n_stages: int
    gate_heads: bool


def data_geometry(d: DataConfig) -> tuple[int | None, tuple[int, int, int] | None]:
    """``(classes, (C, H, W))`` that ``data.build_data`` gives for ``d``, as far as it is known without
    reading the images (None: an npz directory that is not there yet, an ImageFolder's class count).
    ``tests/test_config.py`` holds it equal to ``build_data`` for every registered data set."""
    if d.name == "digits":
        return 10, (1, 8, 8)
    if d.name == "synthetic":
        return 10, (3, 32, 32)
    if d.name in ("cifar10", "cifar100"):
        classes = 10 if d.name == "cifar10" else 100
        if d.source == "torchvision":
            return classes, (3, 32, 32)
        return classes, None if d.root is None else _npz_image_shape(Path(d.root).expanduser() / "train.npz")
    if d.name == "imagefolder":
        return None, (3, d.image_size, d.image_size)
    return None, None


def _npz_image_shape(path: Path) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the ``images`` array ``[N, H, W, C]`` in ``path``, from its header alone; None when
    the file cannot tell (``data.check_arrays`` names what is wrong when the data is read)."""
    try:
        with zipfile.ZipFile(path) as z, z.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return (shape[3], shape[1], shape[2]) if len(shape) == 4 else None


def model_facts(m: ModelConfig, input_shape: tuple[int, int, int] | None, what: str = "these",
                key: str = "model.name") -> ModelFacts:
    """``m`` built on the meta device and run once on a ``[1, *input_shape]`` batch (its own input size
    when None); a ``ConfigError`` naming ``key`` (and ``what``, the data) when the input does not fit."""
    resnet = {"gate_downsample": m.gate_downsample, "zero_init_residual": m.zero_init_residual,
              "switchable_shortcut_bn": m.switchable_shortcut_bn} if m.name.startswith("resnet") else {}
    return _probe(m, input_shape, what, key, tuple(resnet.items()))


@functools.lru_cache(maxsize=64)
def _probe(m: ModelConfig, input_shape: tuple[int, int, int] | None, what: str, key: str,
           resnet: tuple[tuple[str, bool | None], ...]) -> ModelFacts:
    with torch.device("meta"), torch.no_grad():  # as checkpoint.build_model builds it, without memory
        model = create_model(m.name, 10, gating=m.gating, stem=m.stem, switchable_bn=m.switchable_bn,
                             gate_head=None if m.gate_head == "none" else m.gate_head,
                             in_channels=input_shape[0] if input_shape else 3, gate_init_keep=m.gate_init_keep,
                             **dict(resnet))
        shape = input_shape or (model.in_channels, model.input_size, model.input_size)
        try:
            _, feats = model.eval()(torch.zeros(1, *shape), None, return_features=True)
        except (RuntimeError, ValueError, IndexError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
            raise ConfigError(f"{key}: {m.name} with model.stem={m.stem} is built for {model.input_size}x"
                              f"{model.input_size} images and cannot take {what} {'x'.join(map(str, shape))} ones "
                              f"({first})") from None
    return ModelFacts(model.n_units, len(feats), model.gate_heads is not None)


def check_fits(cfg: Config) -> ModelFacts:
    """The model takes the data's images, and the method's per-model keys are in the model's range:
    ``feature_kl_stages`` name stages it has, ``output_kl_top_k`` at most its classes, a ``train_pattern`` or
    ``unit_targets`` one letter / target per unit."""
    classes, shape = data_geometry(cfg.data)
    facts = model_facts(cfg.model, shape, f"data.name={cfg.data.name}'s")
    method, name = cfg.method, cfg.model.name
    if method.name == "adn" and method.adn.feature_kl:
        bad = [s for s in method.adn.feature_kl_stages if s >= facts.n_stages]
        if bad:
            raise ConfigError(f"method.adn.feature_kl_stages: stage {bad[0]} does not exist; {name} has stages "
                              f"0..{facts.n_stages - 1}")
    if method.name == "adn" and classes is not None and method.adn.output_kl_top_k > classes:
        raise ConfigError(f"method.adn.output_kl_top_k: {method.adn.output_kl_top_k} is more than the {classes} "
                          f"classes of data.name={cfg.data.name} (0 = every class)")
    pattern = method.plain.train_pattern
    if method.name == "plain" and pattern and len(pattern) != facts.n_units:
        raise ConfigError(f"method.plain.train_pattern: {pattern!r} has {len(pattern)} letters; {name} "
                          f"(model.gating={cfg.model.gating}) has {facts.n_units} units")
    targets = method.probgates.unit_targets
    if method.name == "probgates" and targets and len(targets) != facts.n_units:
        raise ConfigError(f"method.probgates.unit_targets: {len(targets)} targets for a model with {facts.n_units} "
                          f"units ({name}, model.gating={cfg.model.gating})")
    return facts
