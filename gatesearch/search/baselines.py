"""The papers' default recipes, placed in a study's space as its first trials (paper baselines).

A study that searches a method first trains that method's published setting, so its result is
reported against it (``summary.json``: best searched trial vs best baseline). One baseline per
method the space can produce (``method.name``'s choices, or its fixed value); ``plain`` and
``stochastic_depth`` have none. The recipes, each value checked against the paper text in
the project's papers (000 Gated Depth, 001 ADN, 002 probabilistic gates):

- ``adn`` (001, Sec. 4.2: "The hyperparameter α in Algorithm 1 is set to 0.5 for all networks",
  the Table 1 runs; Algorithm 1 line 8: ``loss_base`` holds the per-stage feature KL terms):
  ``alpha=0.5``, ``feature_kl=true``.
- ``gated_depth`` (000, Sec. 6.1 "Training Procedure": p_min = 0.5, p_max = 0.9, α = 0.5,
  distillation every k = 10 iterations; Sec. 4 repeats α = 0.5, k = 10).
- ``probgates`` (002): data-dependent (AIG) gates, per-batch loss ``L_B`` (Sec. 3.1), constant
  target 0.5, threshold inference with τ = 1/2 (Sec. 3.2) — the best CIFAR-10 setting (Sec. 4.1.2:
  "for target rate of 0.5, dependent per-batch has the best performance"; its CIFAR-10 table,
  "Figure 3" in the text copy) — and target-loss weight 1 (Sec. 2: L = L_target + L_MC).
  ImageNet spaces (``data.name: imagefolder`` or ``model.stem: imagenet``) take the ResNet-50
  table's best top-1 instead (Figure 4: "Ind PB* [t=0.6]", 23.72% deterministic error):
  data-independent (``logit``) gates, per-batch, target 0.6, threshold inference.

How a recipe meets a space (``paper_baselines``):

- a key the space *fixes* keeps its fixed value (the study's premise holds for every trial);
- AIG gates decide per sample inside a stage, which switchable BN cannot follow (``config.py``):
  the baseline keeps the space's gating layout and turns switchable BN off, except when the space
  searches ``model.gating`` and offers ``block`` (the paper's per-block layout), which it then takes;
- a searched key the recipe sets must allow the paper's value (else ``ConfigError``: widen the
  range or set ``study.baselines: false``); a searched key it does not set takes the config
  default, or, when the space excludes the default, the nearest value in range (numbers) or the
  first choice (recorded in ``Baseline.adjusted``);
- a recipe key the space neither fixes nor searches travels with the trial's config
  (``Baseline.extra``), e.g. ``p_max=0.9`` where a space leaves ``p_max`` at its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gatesearch.config import ConfigError, from_flat, to_flat
from gatesearch.search.params import Param

# The Tune config key that marks a baseline trial (no dot: never a Config key, so the trainable
# drops it before building the config), the Optuna user attribute on its enqueued trial, and the
# tag on its MLflow child run. Each holds the method name.
TRIAL_KEY = "gatesearch_baseline"
OPTUNA_ATTR = "gatesearch.baseline"
MLFLOW_TAG = "gatesearch.baseline"

_ADN = {"method.adn.alpha": 0.5, "method.adn.feature_kl": True}
_GATED_DEPTH = {"method.gated_depth.p_min": 0.5, "method.gated_depth.p_max": 0.9,
                "method.gated_depth.alpha": 0.5, "method.gated_depth.k": 10}
_PROBGATES = {"method.probgates.loss": "per_batch", "method.probgates.target_schedule": "constant",
              "method.probgates.inference": "threshold", "method.probgates.threshold": 0.5,
              "method.probgates.weight": 1.0}
_PROBGATES_CIFAR = {"model.gate_head": "aig", **_PROBGATES, "method.probgates.target": 0.5}
_PROBGATES_IMAGENET = {"model.gate_head": "logit", **_PROBGATES, "method.probgates.target": 0.6}


@dataclass(frozen=True)
class Baseline:
    """One paper recipe resolved against a space.

    ``params``: searched keys -> value (decoded), the values Optuna is handed for the trial;
    ``extra``: recipe keys the space does not search, added to the trial's config;
    ``adjusted``: searched keys whose config default lies outside the space, -> the value used.
    """

    method: str
    params: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    adjusted: dict[str, Any] = field(default_factory=dict)

    def config(self, fixed: dict[str, Any]) -> dict[str, Any]:
        """The trial's flat config: the space's fixed keys, the drawn params, the extra keys."""
        return {**fixed, **self.params, **self.extra}


def imagenet_space(fixed: dict[str, Any]) -> bool:
    """ImageNet-style inputs: ImageFolder data or the ImageNet stem (the ResNet-50 table applies)."""
    cfg = from_flat(fixed)
    return cfg.data.name == "imagefolder" or cfg.model.stem == "imagenet"


def recipe(method: str, fixed: dict[str, Any]) -> dict[str, Any] | None:
    """The paper's setting for ``method`` as dotted keys (``None``: the method has no paper recipe)."""
    if method == "adn":
        return dict(_ADN)
    if method == "gated_depth":
        return dict(_GATED_DEPTH)
    if method == "probgates":
        return dict(_PROBGATES_IMAGENET if imagenet_space(fixed) else _PROBGATES_CIFAR)
    return None


def _methods(fixed: dict[str, Any], params: tuple[Param, ...]) -> list[str]:
    p = next((p for p in params if p.key == "method.name"), None)
    return [str(c) for c in p.choices] if p is not None else [from_flat(fixed).method.name]


def _layout(values: dict[str, Any], fixed: dict[str, Any], params: tuple[Param, ...]) -> dict[str, Any]:
    """AIG gates with a layout ``config.py`` accepts and that matches the space's (module docstring)."""
    if values.get("model.gate_head") != "aig":
        return values
    gating = next((p for p in params if p.key == "model.gating"), None)
    if "model.gating" not in fixed and gating is not None and gating.contains("block"):
        return {**values, "model.gating": "block"}
    return {**values, "model.switchable_bn": False}


def _resolve(method: str, fixed: dict[str, Any], params: tuple[Param, ...]) -> Baseline | None:
    values = recipe(method, fixed)
    if values is None:
        return None
    values = _layout({"method.name": method, **values}, fixed, params)
    paper = {k: v for k, v in values.items() if k not in fixed}  # a fixed key keeps its value
    where = f"study.baselines: the {method} paper baseline"
    try:
        defaults = to_flat(from_flat({**fixed, **paper}))
    except ConfigError as e:
        raise ConfigError(f"study.baselines: {where} is not a valid config with this space's fixed keys ({e}); "
                          "set study.baselines: false to run without it") from None
    chosen, drawn, adjusted = dict(fixed), {}, {}
    for p in params:  # in file order, so a `when` sees the values drawn before it
        if not p.active(chosen):
            continue
        if p.key in paper:
            value = paper[p.key]
            if not p.contains(value):
                raise ConfigError(f"search.{p.key}: {where} (study.baselines) needs {value!r}, outside "
                                  f"{p.describe()}; widen it or set study.baselines: false")
        else:
            value = defaults[p.key]
            if not p.contains(value):
                value = adjusted[p.key] = p.nearest(value)
        chosen[p.key] = drawn[p.key] = value
    extra = {k: v for k, v in paper.items() if k not in drawn}
    baseline = Baseline(method, drawn, extra, adjusted)
    try:
        from_flat(baseline.config(fixed))
    except ConfigError as e:
        raise ConfigError(f"study.baselines: {where} is not a valid config in this space ({e}); "
                          "set study.baselines: false to run without it") from None
    return baseline


def paper_baselines(fixed: dict[str, Any], params: tuple[Param, ...]) -> tuple[Baseline, ...]:
    """One baseline per method the space can produce that has a paper recipe, in choice order."""
    found = (_resolve(m, fixed, params) for m in _methods(fixed, params))
    return tuple(b for b in found if b is not None)
