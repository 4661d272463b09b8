"""Search-space files (``search_spaces/*.yaml``) -> a validated ``SearchSpace``.

A space file is data only::

    study:
      name: cifar10_resnet20
      objective: {metric: frontier_score, mode: max}   # or a list of them (multi-objective)
      budget: {trials: 32, epochs: 30, time_budget_s: 14400}
      max_concurrent_trials: 4
      resources: {cpu: 2, gpu: 0.25}
      devices: [jetson-orin-nano, host]
      baselines: true          # the papers' recipes run first (search/baselines.py; counted in trials)
    fixed:                     # dotted config keys -> values
      data.name: cifar10
      data.root: ${CIFAR10_ROOT:-data/cifar10}
    search:                    # dotted config keys -> one distribution each
      method.name: {choice: [adn, gated_depth, probgates]}
      optim.lr: {loguniform: [0.02, 0.2]}
      method.adn.alpha: {uniform: [0.3, 0.9], when: {method.name: adn}}

Everything is checked here, key by key against the ``Config`` dataclasses, before Ray starts:
an unknown key, an impossible range or a value a config field rejects is one ``ConfigError``
naming the key. Only ``suggest`` touches Optuna (through the trial object it is handed), so
this module imports neither Ray nor Optuna.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gatesearch.config import (
    Config,
    ConfigError,
    check_path_name,
    check_seed,
    flat_keys,
    from_flat,
    load_yaml,
    parse_overrides,
    read_utf8,
)
from gatesearch.devices.profiles import DEVICES, check_cost_axis
from gatesearch.evaluate.strategies import DEFAULT_THRESHOLDS
from gatesearch.evaluate.table import ladder
from gatesearch.patterns import all_patterns
from gatesearch.resolve import check_fits, check_names
from gatesearch.search.baselines import OPTUNA_ATTR, TRIAL_KEY, Baseline, paper_baselines
from gatesearch.search.params import KINDS, Param, same_choice

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STUDY_KEYS = {"name", "objective", "budget", "max_concurrent_trials", "resources", "devices", "seed",
               "max_failures", "asha", "baselines", "cost", "reeval", "register"}
_REEVAL_KEYS = ("finalists", "seeds", "baselines", "vary_split")


@dataclass(frozen=True)
class Objective:
    metric: str  # a per-epoch metric of train.fit: top1_super, top1_base, frontier_score, ...
    mode: Literal["max", "min"] = "max"


@dataclass(frozen=True)
class Reeval:
    """``study.reeval``: after the search, the ``finalists`` best searched configs and the best paper
    baseline (``baselines: all``: the best baseline of every searched method) are trained again at the
    full epoch budget, without early stopping, on the same ``seeds`` fresh seed indices; index i sets
    ``train.seed`` and (``vary_split``) ``data.split_seed`` together, so every comparison is paired
    over seeds while it also covers the train/validation split (``search/reeval.py``)."""

    finalists: int
    seeds: int
    baselines: Literal["best", "all"] = "best"
    vary_split: bool = True


@dataclass(frozen=True)
class Study:
    name: str
    objectives: tuple[Objective, ...]
    trials: int = 8
    epochs: int = 10
    time_budget_s: float | None = None  # wall-clock cap for the whole study
    max_concurrent_trials: int = 2
    cpu: float = 1.0  # per training process (the trial, or each of its workers)
    gpu: float = 0.0  # per training process; fractional shares one GPU between trials
    workers: int = 1  # training processes per trial: > 1 runs the trial as a Ray Train TorchTrainer (DDP)
    devices: tuple[str, ...] = ()  # target devices the selector builds menus for
    seed: int = 0
    max_failures: int = 2  # retries of a trial whose worker died (resumes from its last checkpoint)
    asha_grace_period: int = 1  # epochs before ASHA may stop a trial (single objective only)
    asha_reduction_factor: float = 2.0
    cost: str = "macs"  # the frontier score's cost axis: macs | latency:<device> (sets train.score_cost)
    baselines: bool = True  # first train the papers' recipes of the searched methods (search/baselines.py)
    reeval: Reeval | None = None  # re-train the finalists on paired seeds (absent: single-run comparison)
    register: str | None = None  # MLflow model name: each device's bundle of the best trial, alias = device

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def trial_cpu(self) -> float:
        """CPUs one trial holds: every worker's."""
        return self.workers * self.cpu

    @property
    def trial_gpu(self) -> float:
        return self.workers * self.gpu

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]


@dataclass(frozen=True)
class SearchSpace:
    study: Study
    fixed: dict[str, Any]  # dotted key -> value, budget epochs included as train.epochs
    params: tuple[Param, ...]
    source: str = ""  # the YAML text, logged to the study's MLflow parent run
    path: str = ""
    overrides: tuple[str, ...] = field(default=())
    baselines: tuple[Baseline, ...] = field(default=())  # empty when study.baselines is false

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run space: only keys that apply to the values drawn so far are drawn.

        Returns the drawn values (choices decoded), which OptunaSearch merges into the trial config.
        A baseline trial (enqueued with user attribute ``baselines.OPTUNA_ATTR``; its params are
        fixed by Optuna) also returns the recipe's keys the space does not search and the
        ``baselines.TRIAL_KEY`` marker.
        """
        chosen = dict(self.fixed)
        for p in self.params:
            if p.active(chosen):
                chosen[p.key] = p.suggest(trial)
        drawn = {p.key: chosen[p.key] for p in self.params if p.key in chosen}
        method = trial.user_attrs.get(OPTUNA_ATTR)
        baseline = next((b for b in self.baselines if b.method == method), None)
        return drawn if baseline is None else {**drawn, **baseline.extra, TRIAL_KEY: method}

    def baseline_trials(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``(params, user_attrs)`` for ``optuna.Study.enqueue_trial``, one per baseline, in order."""
        by_key = {p.key: p for p in self.params}
        return [({k: by_key[k].trial_value(v) for k, v in b.params.items()}, {OPTUNA_ATTR: b.method})
                for b in self.baselines]

    def example_flat(self) -> dict[str, Any]:
        """A flat config using each active param's first probe value (for checks and docs)."""
        chosen = dict(self.fixed)
        for p in self.params:
            if p.active(chosen):
                chosen[p.key] = p.probe_values()[0]
        return chosen


def _expand_env(value: Any, key: str) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in string values (data roots live outside the package)."""
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in os.environ:
            return os.environ[m.group(1)]
        if m.group(2) is None:
            raise ConfigError(f"{key}: environment variable {m.group(1)} is not set (or pass --set {key}=...)")
        return m.group(2)

    return _ENV.sub(sub, value)


# ---------------------------------------------------------------- parsing


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def _parse_objectives(raw: Any) -> tuple[Objective, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items or raw is None:
        raise ConfigError("study.objective: missing (give {metric: ..., mode: max|min} or a list of them)")
    out = []
    for i, item in enumerate(items):
        where = f"study.objective[{i}]" if isinstance(raw, list) else "study.objective"
        if isinstance(item, str):
            item = {"metric": item}
        item = _mapping(item, where)
        unknown = set(item) - {"metric", "mode"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (use metric, mode)")
        metric, mode = item.get("metric"), item.get("mode", "max")
        if not isinstance(metric, str) or not re.fullmatch(r"[A-Za-z0-9_]+", metric):
            raise ConfigError(f"{where}.metric: must be a metric name such as top1_super, got {metric!r}")
        if mode not in ("max", "min"):
            raise ConfigError(f"{where}.mode: must be max or min, got {mode!r}")
        out.append(Objective(metric, mode))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError("study.objective: a metric is listed twice")
    return tuple(out)


def _parse_study(raw: Any) -> Study:
    raw = _mapping(raw, "study")
    unknown = set(raw) - _STUDY_KEYS
    if unknown:
        raise ConfigError(f"study.{sorted(unknown)[0]}: unknown key; known: {', '.join(sorted(_STUDY_KEYS))}")
    name = check_path_name(raw.get("name"), "study.name")  # a directory of --storage and of the trials' scratch
    budget = _mapping(raw.get("budget"), "study.budget")
    unknown = set(budget) - {"trials", "epochs", "time_budget_s"}
    if unknown:
        raise ConfigError(f"study.budget.{sorted(unknown)[0]}: unknown key (use trials, epochs, time_budget_s)")
    resources = _resources(_mapping(raw.get("resources"), "study.resources"))
    asha = _mapping(raw.get("asha"), "study.asha")
    unknown = set(asha) - {"grace_period", "reduction_factor"}
    if unknown:
        raise ConfigError(f"study.asha.{sorted(unknown)[0]}: unknown key (use grace_period, reduction_factor)")
    devices = raw.get("devices") or []
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise ConfigError(f"study.devices: must be a list of device names, got {devices!r}")
    for d in devices:  # the selector's profiles: a typo fails before Ray starts
        if d not in DEVICES:
            raise ConfigError(f"study.devices: unknown device {d!r}; known: {', '.join(DEVICES.names())}")

    def integer(value: Any, where: str, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{where}: must be an integer >= {low}, got {value!r}")
        return value

    study = Study(
        name=name,
        objectives=_parse_objectives(raw.get("objective")),
        trials=integer(budget.get("trials", Study.trials), "study.budget.trials", 1),
        epochs=integer(budget.get("epochs", Study.epochs), "study.budget.epochs", 1),
        time_budget_s=None if budget.get("time_budget_s") is None
        else _number(budget["time_budget_s"], "study.budget.time_budget_s"),
        max_concurrent_trials=integer(raw.get("max_concurrent_trials", Study.max_concurrent_trials),
                                      "study.max_concurrent_trials", 1),
        cpu=_number(resources.get("cpu", Study.cpu), f"study.resources.{resources.get('cpu_key', 'cpu')}"),
        gpu=_number(resources.get("gpu", Study.gpu), f"study.resources.{resources.get('gpu_key', 'gpu')}"),
        workers=integer(resources.get("workers", Study.workers), "study.resources.workers", 1),
        devices=tuple(devices),
        seed=integer(raw.get("seed", Study.seed), "study.seed", 0),
        max_failures=integer(raw.get("max_failures", Study.max_failures), "study.max_failures", 0),
        asha_grace_period=integer(asha.get("grace_period", Study.asha_grace_period), "study.asha.grace_period", 1),
        asha_reduction_factor=_number(asha.get("reduction_factor", Study.asha_reduction_factor),
                                      "study.asha.reduction_factor"),
        cost=_cost_axis(raw.get("cost", Study.cost)),
        baselines=raw.get("baselines", Study.baselines),
        register=None if raw.get("register") is None else check_path_name(raw["register"], "study.register"),
        reeval=_parse_reeval(raw.get("reeval"), integer),
    )
    check_seed(study.seed, "study.seed")  # Optuna's samplers seed numpy with it
    if not isinstance(study.baselines, bool):
        raise ConfigError(f"study.baselines: must be true or false, got {study.baselines!r}")
    if study.time_budget_s is not None and study.time_budget_s <= 0:
        raise ConfigError(f"study.budget.time_budget_s: must be > 0, got {study.time_budget_s}")
    cpu_key, gpu_key = (f"study.resources.{resources.get(k, d)}" for k, d in (("cpu_key", "cpu"), ("gpu_key", "gpu")))
    if study.cpu <= 0:
        raise ConfigError(f"{cpu_key}: must be > 0, got {study.cpu:g}")
    if study.gpu < 0 or (study.gpu > 1 and study.gpu != int(study.gpu)):
        raise ConfigError(f"{gpu_key}: must be a fraction in [0, 1] or a whole number, got {study.gpu:g}")
    if study.workers > 1 and 0 < study.gpu < 1:
        raise ConfigError(f"{gpu_key}: {study.gpu:g} GPU per worker; DDP workers (workers: {study.workers}) "
                          "each need a whole GPU of their own (NCCL) or none (gloo on CPUs)")
    if study.asha_reduction_factor <= 1:
        raise ConfigError(f"study.asha.reduction_factor: must be > 1, got {study.asha_reduction_factor}")
    if study.reeval is not None and study.multi_objective:
        raise ConfigError("study.reeval: re-evaluation ranks finalists by one objective; this study has "
                          f"{len(study.objectives)} (drop reeval or keep one objective)")
    return study


_RESOURCE_KEYS = ("cpu", "gpu", "workers", "cpus_per_worker", "gpus_per_worker")


def _resources(raw: dict[str, Any]) -> dict[str, Any]:
    """``study.resources``: ``cpu`` / ``gpu`` are one training process's share, the trial's own or (``workers``
    > 1) each worker's; ``cpus_per_worker`` / ``gpus_per_worker`` say the same for multi-worker trials, so a
    space gives one spelling of each. Returns ``cpu``, ``gpu``, ``workers`` plus the spelling used (for errors)."""
    unknown = set(raw) - set(_RESOURCE_KEYS)
    if unknown:
        raise ConfigError(f"study.resources.{sorted(unknown)[0]}: unknown key (use {', '.join(_RESOURCE_KEYS)})")
    out = {k: raw[k] for k in ("workers",) if k in raw}
    for short, long in (("cpu", "cpus_per_worker"), ("gpu", "gpus_per_worker")):
        if short in raw and long in raw:
            raise ConfigError(f"study.resources.{long}: give {short} or {long}, not both (both are one "
                              "training process's share)")
        if long in raw:
            out[short], out[f"{short}_key"] = raw[long], long
        elif short in raw:
            out[short] = raw[short]
    return out


def _parse_reeval(raw: Any, integer: Any) -> Reeval | None:
    """``study.reeval: {finalists: K >= 1, seeds: N >= 2, baselines: best | all, vary_split: bool}``."""
    if raw is None:
        return None
    raw = _mapping(raw, "study.reeval")
    unknown = sorted(set(raw) - set(_REEVAL_KEYS))
    if unknown:
        raise ConfigError(f"study.reeval.{unknown[0]}: unknown key (use {', '.join(_REEVAL_KEYS)})")
    for key in ("finalists", "seeds"):
        if key not in raw:
            raise ConfigError(f"study.reeval.{key}: required (e.g. reeval: {{finalists: 2, seeds: 3}})")
    baselines = raw.get("baselines", Reeval.baselines)
    if baselines not in ("best", "all"):
        raise ConfigError(f"study.reeval.baselines: must be best or all, got {baselines!r}")
    vary = raw.get("vary_split", Reeval.vary_split)
    if not isinstance(vary, bool):
        raise ConfigError(f"study.reeval.vary_split: must be true or false, got {vary!r}")
    # N >= 2: one seed has no spread, so no interval and no verdict
    return Reeval(finalists=integer(raw["finalists"], "study.reeval.finalists", 1),
                  seeds=integer(raw["seeds"], "study.reeval.seeds", 2), baselines=baselines, vary_split=vary)


def _cost_axis(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"study.cost: must be macs or latency:<device>, got {value!r}")
    check_cost_axis(value, "study.cost")
    return value


def _parse_param(key: str, spec: Any, known: set[str]) -> Param:
    where = f"search.{key}"
    if key not in known:
        raise ConfigError(f"{where}: unknown config key")
    spec = _mapping(spec, where)
    kinds = [k for k in spec if k in KINDS]
    unknown = set(spec) - set(KINDS) - {"when", "log"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (use one of {', '.join(KINDS)}, when, log)")
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(KINDS)}")
    kind, args = kinds[0], spec[kinds[0]]
    when = tuple(
        (k, tuple(v) if isinstance(v, list) else (v,)) for k, v in _mapping(spec.get("when"), f"{where}.when").items()
    )
    for k, _ in when:
        if k not in known:
            raise ConfigError(f"{where}.when.{k}: unknown config key")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and kind != "int"):
        raise ConfigError(f"{where}.log: true/false, for int only (use loguniform for floats)")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}.choice: must be a non-empty list, got {args!r}")
        return Param(key, "choice", choices=tuple(args), when=when)
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{where}.{kind}: must be [low, high], got {args!r}")
    low, high = _number(args[0], f"{where}.{kind}"), _number(args[1], f"{where}.{kind}")
    if low > high:
        raise ConfigError(f"{where}.{kind}: low={args[0]} > high={args[1]}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.loguniform: low must be > 0, got {args[0]}")
    if kind == "int":
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}.int: bounds must be integers, got {args!r}")
        if log and low < 1:
            raise ConfigError(f"{where}.int: log=true needs low >= 1, got {args[0]}")
    return Param(key, kind, low=low, high=high, log=log, when=when)


def parse(raw: Any, overrides: list[str] | tuple[str, ...] = (), source: str = "", path: str = "") -> SearchSpace:
    """Nested YAML data (+ ``key=value`` overrides, which fix a key) -> a validated ``SearchSpace``."""
    raw = _mapping(raw, "space file")
    unknown = set(raw) - {"study", "fixed", "search"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown top-level key (use study, fixed, search)")
    study = _parse_study(raw.get("study"))
    known = flat_keys()
    fixed = {k: _expand_env(v, f"fixed.{k}") for k, v in _mapping(raw.get("fixed"), "fixed").items()}
    for k in fixed:
        if k not in known:
            raise ConfigError(f"fixed.{k}: unknown config key")
    if "train.epochs" in fixed:
        raise ConfigError("fixed.train.epochs: set the budget with study.budget.epochs instead")
    fixed["train.epochs"] = study.epochs
    if "train.score_cost" in fixed and "cost" in _mapping(raw.get("study"), "study"):
        raise ConfigError("fixed.train.score_cost: set the cost axis with study.cost instead")
    fixed.setdefault("train.score_cost", study.cost)
    searched = _mapping(raw.get("search"), "search")
    over = parse_overrides(overrides)
    for k in over:
        if k not in known:
            raise ConfigError(f"--set {k}: unknown config key")
    # an override fixes the key, whether the file fixed or searched it
    searched = {k: v for k, v in searched.items() if k not in over}
    fixed.update(over)
    for k in searched:
        if k in fixed:
            raise ConfigError(f"search.{k}: also in fixed; a key is either fixed or searched")
    params = tuple(_parse_param(k, v, known) for k, v in searched.items())
    space = SearchSpace(study, fixed, params, source=source, path=path, overrides=tuple(overrides))
    _check_values(space)
    space = _with_baselines(space)
    _check_objectives(space)
    return space


def _with_baselines(space: SearchSpace) -> SearchSpace:
    """The space with its paper baselines resolved (``study.baselines``), which count within
    ``study.budget.trials`` and must leave at least one trial for the search."""
    if not space.study.baselines:
        return space
    found = paper_baselines(space.fixed, space.params)
    if found and space.study.trials <= len(found):
        names = ", ".join(b.method for b in found)
        raise ConfigError(f"study.budget.trials: {space.study.trials} trials leave none for the search after "
                          f"{len(found)} paper baselines ({names}); raise it or set study.baselines: false")
    return dataclasses.replace(space, baselines=found)


def load_space(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """Read and validate a space file; every problem is one ``ConfigError`` line naming the key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space {p} does not exist")
    text = read_utf8(p, "search space")
    raw = load_yaml(text, str(p))
    try:
        return parse(raw, overrides, source=text, path=str(p))
    except ConfigError as e:
        raise ConfigError(f"{p.name}: {e}") from None


# ---------------------------------------------------------------- value checks


def _check_condition(key: str, dep: Param, values: tuple[Any, ...]) -> None:
    """Each value of ``key``'s ``when`` on the searched key ``dep`` is one ``dep`` can take: a listed
    choice, an integer in an ``int`` range; a ``uniform`` draw equals a given number with probability 0."""
    where = f"search.{key}.when.{dep.key}"
    if dep.kind in ("uniform", "loguniform"):
        raise ConfigError(f"{where}: {dep.key} is drawn from a continuous range ({dep.describe()}), which never "
                          "equals one value; condition on a choice or int key")
    for v in values:
        if not dep.contains(v):
            raise ConfigError(f"{where}: {v!r} is outside the values {dep.key} can take ({dep.describe()}), so the "
                              "condition never holds for it")


def _check_values(space: SearchSpace) -> None:
    """Build a Config for the fixed values and for every probe value of every searched key.

    The other searched keys sit at their first probe value and the key's ``when`` conditions
    are satisfied, so a value is judged in a context where it would actually be used.
    """
    try:
        check_names(from_flat(space.fixed))
    except ConfigError as e:
        raise ConfigError(f"fixed: {e}") from None
    order = [p.key for p in space.params]
    base = {**space.fixed, **{p.key: p.probe_values()[0] for p in space.params}}
    for i, p in enumerate(space.params):
        for k, vals in p.when:
            if k not in space.fixed and k not in order[:i]:
                raise ConfigError(f"search.{p.key}.when.{k}: must be fixed or searched before {p.key}")
            dep = next((q for q in space.params if q.key == k), None)
            if dep is not None:
                _check_condition(p.key, dep, vals)
            elif not same_choice(space.fixed[k], vals):
                raise ConfigError(f"search.{p.key}.when.{k}: {list(vals)} can never hold")
        context = {**base, **{k: vals[0] for k, vals in p.when}}
        for value in p.probe_values():
            try:
                check_names(from_flat({**context, p.key: value}))
            except ConfigError as e:
                raise ConfigError(f"search.{p.key}: value {value!r} is rejected ({e})") from None


# ---------------------------------------------------------------- objectives every trial reports

# train.fit's per-epoch metrics with or without an evaluation (train._run_epoch), and what the trials' reporter
# adds (trainable._TuneReporter); the evaluated ones come from train._Evaluator and evaluate.table.table_metrics
_EVERY_EPOCH = ("train_loss", "lr", "epoch_time_s", "train_time_s", "epochs_done")
_EVALUATED = ("frontier_score", "top1_super", "top1_base")
_SHAPING_KEYS = ("method.name", "train.eval_all_patterns_max_units", "method.probgates.threshold")  # + model.*
_MAX_CONFIGS = 256  # trial layouts checked per space; a choice product beyond it is checked in part


def _not_reported(metric: str, cfg: Config) -> str | None:
    """Why a trial with ``cfg`` never reports ``metric`` per epoch, or None when it does."""
    if metric in _EVERY_EPOCH or metric in _EVALUATED:
        return None
    facts = check_fits(cfg)
    n, model = facts.n_units, f"{cfg.model.name} (model.gating={cfg.model.gating})"
    if metric.startswith("test_"):
        return "test-split metrics come once, after the last epoch (train.final_test); a study ranks trials every epoch"
    if metric == "kl_full_base":
        return None if n > 0 else f"{model} has no units"
    strategies = {f"threshold_{t:.2f}" for t in {*DEFAULT_THRESHOLDS, cfg.method.probgates.threshold}}
    kind, _, name = metric.partition("_")
    if kind in ("top1", "cost") and (name == "gated" or name in strategies | {"always_on", "stochastic", "ensemble"}):
        return None if facts.gate_heads else f"only learned gates report it; {model} with model.gate_head=none has none"
    if kind in ("top1", "cost") and name and set(name) <= {"T", "F"}:
        if len(name) != n:
            return f"{model} has {n} units, so its patterns have {n} letters"
        scored = all_patterns(n) if n <= cfg.train.eval_all_patterns_max_units else ladder(n)
        return None if name in {str(p) for p in scored} else (
            f"{model} has {n} units > train.eval_all_patterns_max_units={cfg.train.eval_all_patterns_max_units}: "
            f"only the ladder {', '.join(str(p) for p in scored)} is scored")
    unit = metric.removeprefix("gate_rate_")
    if unit != metric and (unit == "mean" or unit.isdigit()):
        if cfg.method.name != "probgates":
            return f"only method.name=probgates reports gate rates, not {cfg.method.name}"
        return None if unit == "mean" or int(unit) < n else f"{model} has units 0..{n - 1}"
    return ("train.fit reports frontier_score, top1_super, top1_base, top1_<PATTERN>, cost_<PATTERN>, kl_full_base, "
            "top1_gated, gate_rate_mean, train_loss, ... (docs/search.md)")


def _trial_layouts(space: SearchSpace) -> list[dict[str, Any]]:
    """Flat configs covering every trial layout the space draws: each value of every active searched key that
    shapes the reported metrics (``model.*`` and ``_SHAPING_KEYS``), the other keys at their first value; and
    each paper baseline's config."""
    layouts = [dict(space.fixed)]
    for p in space.params:
        shaping = p.key.startswith("model.") or p.key in _SHAPING_KEYS
        grown = []
        for chosen in layouts:
            values = p.probe_values() if shaping else p.probe_values()[:1]
            grown += [{**chosen, p.key: v} for v in values] if p.active(chosen) else [chosen]
        layouts = grown[:_MAX_CONFIGS]
    return layouts + [b.config(space.fixed) for b in space.baselines]


def _check_objectives(space: SearchSpace) -> None:
    """Every objective metric is one that every trial reports each epoch (Tune stops a study at the first
    result without it, after the first trial has trained)."""
    layouts = _trial_layouts(space)
    for i, metric in enumerate(space.study.metrics):
        where = f"study.objective[{i}].metric" if space.study.multi_objective else "study.objective.metric"
        for flat in layouts:
            reason = _not_reported(metric, from_flat(flat))
            if reason is not None:
                raise ConfigError(f"{where}: trials do not report {metric!r} ({reason})")
