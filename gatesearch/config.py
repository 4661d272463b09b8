"""Run configuration: frozen dataclasses, one default per field, validated on construction.

Three spellings of the same config, converted here and nowhere else:
- nested dicts (YAML files),
- flat dotted keys (``method.adn.alpha``: MLflow params, Tune search spaces, ``--set``),
- the ``Config`` dataclass tree the code uses.

Every user-supplied value goes through ``from_nested``/``from_flat``, which reject an unknown
key or a bad value with a ``ConfigError`` whose message names the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from gatesearch.errors import UserError


class ConfigError(UserError):
    """A user-caused configuration problem; its message is one line naming the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


NAME_MAX = 64  # a name becomes one path component: far below the 255 bytes of a file name, with room for suffixes
_PATH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_path_name(value: Any, key: str) -> str:
    """``value`` if it can be one path component as it is: letters, digits, ``_ . -``, starting with a
    letter or digit (so never ``.``, ``..``, a hidden or an option-like name), at most ``NAME_MAX``
    characters. Study, experiment and run names pass here before they name a directory."""
    if not isinstance(value, str) or not _PATH_NAME.fullmatch(value):
        raise ConfigError(f"{key}: must be a name of letters, digits, _ . - starting with a letter or digit, "
                          f"got {value!r}")
    if len(value) > NAME_MAX:
        raise ConfigError(f"{key}: must be at most {NAME_MAX} characters, got {len(value)}")
    return value


SEED_MAX = 2**32 - 1  # np.random.seed's bound (train.seed); data.split_seed shares it, study.reeval sets both from one index


def check_seed(value: int, key: str) -> None:
    """A seed numpy takes: an integer in [0, ``SEED_MAX``] (``-1`` or ``2**40`` fail only once training starts)."""
    _check(0 <= value <= SEED_MAX, key, f"must be a seed in [0, 2**32 - 1], got {value}")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet20"
    gating: Literal["stage", "block", "none"] = "stage"
    stem: Literal["cifar", "imagenet"] = "cifar"
    switchable_bn: bool | None = None  # None: on for gating="stage"
    gate_head: Literal["none", "logit", "aig"] = "none"  # learned gates (probgates) need one
    # keep probability every gate head starts at (ConvNet-AIG: fc2 biases [0.1, 2], ~0.87)
    gate_init_keep: float = 0.9
    # block gating: the shape-changing first block of a stage is a unit too, shortcut(x) + z * F(x)
    # (AIG and 002_...txt Sec. 4.2.1 "ResNet-50 (16 gates)"); None: on for model.gating=block
    gate_downsample: bool | None = None
    zero_init_residual: bool = False  # zero the last BN weight of every residual branch (Goyal et al. 2017)
    init_from: str | None = None  # a torchvision ResNet state dict (.pth) to start from (models/torchvision_init.py)
    # a mandatory block's downsampling shortcut: false = one BN shared by every sub-network (ADN's official
    # ResNet; resnet50 25,583,144 params), true = two switchable sets as its residual branch (+7,680)
    switchable_shortcut_bn: bool = False
    # data parallelism: BatchNorm batch statistics over the global batch (every BN, both switchable sets);
    # false: each rank normalises with its shard's statistics (docs/DESIGN_NOTES.md item 46)
    sync_bn: bool = False

    def __post_init__(self) -> None:
        _check(not self.switchable_shortcut_bn or (self.name.startswith("resnet") and self.gating == "stage"
               and self.switchable_bn is not False), "model.switchable_shortcut_bn",
               f"needs switchable BN in a ResNet (model.gating=stage), not {self.name} with gating={self.gating}, "
               f"switchable_bn={self.switchable_bn}")
        _check(not (self.switchable_bn and self.gating != "stage"), "model.switchable_bn", "needs model.gating=stage")
        _check(0.0 < self.gate_init_keep < 1.0, "model.gate_init_keep", f"must be in (0, 1), got {self.gate_init_keep}")
        _check(not (self.gate_downsample and self.gating != "block"), "model.gate_downsample", "needs model.gating=block")
        resnet = self.name.startswith("resnet")
        _check(resnet or not self.gate_downsample, "model.gate_downsample", f"applies to the ResNets only, not {self.name}")
        _check(resnet or not self.zero_init_residual, "model.zero_init_residual",
               f"applies to the ResNets only, not {self.name}")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # digits | cifar10 | cifar100 | imagefolder | synthetic
    root: str | None = None  # npz directory (train.npz/test.npz) or ImageFolder root
    source: Literal["npz", "torchvision"] = "npz"  # cifar only: npz dir, or torchvision
    download: bool = False  # torchvision only: fetch the data set when missing
    val_fraction: float = 0.1  # carved from train, for evaluation during training and selection
    split_seed: int = 0  # seeds the val split / train subset (same images for every trial and seed)
    train_subset: int | None = None  # use only this many training images (fast tests, budgets)
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 0
    augment: bool = True
    image_size: int = 224  # imagefolder only
    synthetic_size: int = 512  # synthetic only: images per split
    # in-memory sets: uint8 arrays on the training device, batches cut/augmented there; auto = on for CUDA
    on_device: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        check_seed(self.split_seed, "data.split_seed")
        _check(self.image_size >= 1, "data.image_size", f"must be >= 1, got {self.image_size}")
        _check(self.synthetic_size >= 1, "data.synthetic_size", f"must be >= 1, got {self.synthetic_size}")
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.eval_batch_size >= 1, "data.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.train_subset is None or self.train_subset >= 1, "data.train_subset", "must be >= 1")
        _check(self.on_device is not True or self.name != "imagefolder", "data.on_device",
               "imagefolder decodes files on the host: use auto or false")
        _check(self.on_device is not True or self.num_workers == 0, "data.on_device",
               f"the device path runs no loader workers: set data.num_workers=0, got {self.num_workers}")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_decay_norm_bias: bool = False  # no weight decay on norm weights/biases and every bias (ADN official: on)
    schedule: Literal["cosine", "step", "multistep", "constant"] = "cosine"
    milestones: tuple[int, ...] = ()  # multistep: epochs at which the lr is multiplied by gamma (AIG: 30, 60, 90)
    gamma: float = 0.1  # multistep: the factor at each milestone
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _check(0 < self.gamma <= 1, "optim.gamma", f"must be in (0, 1], got {self.gamma}")
        ms = list(self.milestones)
        _check(all(m >= 1 for m in ms) and ms == sorted(set(ms)), "optim.milestones",
               f"must be increasing epochs >= 1, got {ms}")
        _check(self.schedule != "multistep" or bool(ms), "optim.milestones", "optim.schedule=multistep needs a list")
        _check(self.schedule == "multistep" or not ms, "optim.milestones", f"only used by optim.schedule=multistep, "
               f"not {self.schedule}")


# train.eval_all_patterns_max_units: at most 2^12 = 4096 patterns scored per evaluation, the selector's own
# exhaustive bound (evaluate/table.py, EXHAUSTIVE_MAX_UNITS); more cannot fit an epoch's evaluation
EVAL_ALL_PATTERNS_MAX = 12


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    max_steps_per_epoch: int | None = None  # cap an epoch (budgets, tests)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # on CUDA only
    amp_eval: bool = True  # evaluate under train.amp's autocast too (CUDA only, as train.amp)
    channels_last: bool = True  # NHWC activations (cuDNN on CUDA, oneDNN on CPU: ~19% faster training here)
    compile: Literal["off", "inductor", "aot_eager", "eager"] = "off"  # torch.compile backend of the training step
    cudnn_benchmark: bool = True  # CUDA only: cuDNN times its conv algorithms per shape, keeps the fastest
    keep_freed_memory: bool = True  # CPU: malloc keeps freed activations for the next step (no page faults)
    eval_every: int = 1  # epochs
    eval_all_patterns_max_units: int = 4  # evaluate every pattern when n_units <= this, else the ladder
    # after the last epoch, also score every candidate on the test split (test_top1_<candidate>, test_frontier_score,
    # test_n): what study.reeval's finalists report, so menus carry a spread over seeds on the test split
    final_test: bool = False
    bn_reestimate_batches: int = 0  # >0: re-estimate BN per candidate before evaluating it
    score_cost: str = "macs"  # cost axis of frontier_score: macs | latency:<device> (the selector's model)
    label_smoothing: float = 0.0  # eps of every method's CE (Szegedy et al. 2016); ResNet papers: 0
    ema_decay: float = 0.0  # >0: evaluate (and checkpoint) an EMA of the weights, updated every step; 0 = off
    out_dir: str = "outputs"
    log_every: int = 20  # steps between progress updates

    def __post_init__(self) -> None:
        _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None, "train.device",
               f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        check_seed(self.seed, "train.seed")
        _check(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        _check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "train.max_steps_per_epoch", "must be >= 1")
        _check(self.eval_every >= 1, "train.eval_every", "must be >= 1")
        _check(0 <= self.eval_all_patterns_max_units <= EVAL_ALL_PATTERNS_MAX, "train.eval_all_patterns_max_units",
               f"must be in [0, {EVAL_ALL_PATTERNS_MAX}] (2^n patterns scored per evaluation), "
               f"got {self.eval_all_patterns_max_units}")
        _check(self.bn_reestimate_batches >= 0, "train.bn_reestimate_batches", "must be >= 0")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}")
        _check(self.score_cost == "macs" or self.score_cost.startswith("latency:"), "train.score_cost",
               f"must be macs or latency:<device>, got {self.score_cost!r}")


@dataclass(frozen=True)
class PlainConfig:
    train_pattern: str = ""  # "" trains the super-net; a pattern (e.g. "TTT") trains that fixed sub-network

    def __post_init__(self) -> None:
        _check(set(self.train_pattern.upper()) <= {"T", "F"}, "method.plain.train_pattern",
               f"use only T (skipped) and F (kept), got {self.train_pattern!r}")


@dataclass(frozen=True)
class StochasticDepthConfig:
    p_last: float = 0.5  # keep probability of the last unit (Huang et al.: linear decay from 1)

    def __post_init__(self) -> None:
        _check(0.0 < self.p_last <= 1.0, "method.stochastic_depth.p_last", f"must be in (0, 1], got {self.p_last}")


@dataclass(frozen=True)
class ADNConfig:
    """ADN (``001_...txt``, Sec. 3.2, Algorithm 1; official code ``wchkang/depth`` ``train_adn.py``)."""

    alpha: float = 0.5  # weight of CE(super); 1 - alpha on the distillation terms (Sec. 4.2: 0.5 for all networks)
    feature_kl: bool = True  # include the per-stage feature KL terms (Algorithm 1 step 8; False: output KL only)
    feature_kl_stages: tuple[int, ...] = ()  # 0-based stages distilled; () = every stage (Algorithm 1: s = 1..N_r)
    feature_kl_reduction: Literal["pooled", "per_position"] = "pooled"  # official: stage outputs average-pooled
    temperature: float = 1.0  # T of every KL term, each scaled by T^2 (official --subpath-temp, default 1.0)
    output_kl_top_k: int = 0  # distil only the teacher's top-k classes (official ImageNet code: 500); 0 = all
    two_backward: bool = False  # super backward, then base backward (memory-lean, DDP-safe)

    def __post_init__(self) -> None:
        key = "method.adn."
        _check(0.0 <= self.alpha <= 1.0, key + "alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.temperature > 0, key + "temperature", f"must be > 0, got {self.temperature}")
        _check(self.output_kl_top_k >= 0, key + "output_kl_top_k", f"must be >= 0 (0 = every class), got {self.output_kl_top_k}")
        _check(all(s >= 0 for s in self.feature_kl_stages) and len(set(self.feature_kl_stages)) == len(self.feature_kl_stages),
               key + "feature_kl_stages", f"must be distinct stage indices >= 0, got {list(self.feature_kl_stages)}")


@dataclass(frozen=True)
class GatedDepthConfig:
    """Gated Depth (``000_...txt``, Sec. 3-4; defaults from Sec. 6.1, "Training Procedure")."""

    p_min: float = 0.5  # keep probability of the last unit (or at the end of training); Sec. 6.1: 0.5
    p_max: float = 0.9  # keep probability of the first unit (or at the start of training); Sec. 6.1: 0.9
    p_schedule: Literal["constant", "units", "time", "units_time"] = "units"
    k: int = 10  # every k-th step is a two-pass self-distillation step (Sec. 4 and 6.1: k = 10)
    alpha: float = 0.5  # weight of CE(base) in the distillation step, Eq. 7 (Sec. 6.1: 0.5)
    teacher_grad: bool = True  # Eq. 7 as written: the full network's side of the KL gets a gradient too
    calibrate: bool = True  # full-depth evaluation scales the gated path by p_s (Sec. 4, inference)

    def __post_init__(self) -> None:
        _check(0.0 < self.p_min <= 1.0, "method.gated_depth.p_min", f"must be in (0, 1], got {self.p_min}")
        _check(0.0 < self.p_max <= 1.0, "method.gated_depth.p_max", f"must be in (0, 1], got {self.p_max}")
        _check(self.p_min <= self.p_max, "method.gated_depth.p_min", f"p_min={self.p_min} > p_max={self.p_max}")
        _check(self.k >= 1, "method.gated_depth.k", f"must be >= 1, got {self.k}")
        _check(0.0 <= self.alpha <= 1.0, "method.gated_depth.alpha", f"must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class ProbGatesConfig:
    """Probabilistic gates; paper ``002_7f2a293bb907def9`` (shared papers folder) (Herrmann, Bowen & Zabih),
    AIG = ConvNet-AIG's code. ``docs/training.md`` maps each key to its statement and test."""

    loss: Literal["per_gate", "per_batch", "const_quad"] = "per_batch"  # paper Sec. 3.1: its proposal
    target: float = 0.5  # target activation rate t; paper Sec. 4.1.1 runs t in {0.4, 0.5, 0.6}, CIFAR at 0.5
    target_schedule: Literal["constant", "annealed", "variable"] = "constant"
    targets: tuple[float, ...] = ()  # annealed: explicit target per epoch, last one held (overrides the steps)
    anneal_start: float = 1.0  # annealed: start here (paper Sec. 6, "down from 1") ...
    anneal_step: float = 0.05  # ... and decrease by a = 0.05 ...
    anneal_every: int = 5  # ... every k = 5 epochs, down to `target` (paper supplement S2.1)
    variable_update: Literal["moving_average", "ema"] = "moving_average"  # supplement S2.2: both named
    target_ema: float = 0.9  # variable + ema: momentum per batch (no value in the paper)
    unit_targets: tuple[float, ...] = ()  # per_gate: one target per unit; units at 1 leave the loss (AIG)
    rate_on: Literal["sample", "prob"] = "sample"  # the loss acts on sampled z (paper Sec. 2.1, AIG) or keep_prob
    weight: float = 1.0  # lambda on the target-rate loss: paper Sec. 2.1 L = L_target + L_MC
    tau_start: float = 1.0  # Gumbel temperature, annealed geometrically to tau_end; AIG fixes 1
    tau_end: float = 1.0
    gate_lr_mult: float = 1.0  # AIG --lrfact 1
    gate_weight_decay: float | None = None  # None: optim.weight_decay, as AIG (one decay for all groups)
    inference: Literal["threshold", "always_on", "stochastic", "ensemble"] = "threshold"  # paper Sec. 4.1.2
    threshold: float = 0.5  # keep a unit when keep_prob >= threshold; paper Sec. 3.2 "we set tau = 1/2"
    runs: int = 5  # stochastic / ensemble passes; paper Fig. 4: "we run the test set 5 times"
    # BN statistics re-estimated once after the last epoch, on this many training batches with the gates sampled
    # as in training (paper Sec. 4.1.1: "before final evaluation, we run training with a learning rate of zero
    # ... for 200 batches"); kept by the final model. 0: off
    final_bn_batches: int = 200

    def __post_init__(self) -> None:
        key = "method.probgates."
        _check(0.0 < self.target <= 1.0, key + "target", f"must be in (0, 1], got {self.target}")
        _check(all(0.0 < t <= 1.0 for t in self.targets), key + "targets", "each must be in (0, 1]")
        _check(0.0 < self.anneal_start <= 1.0, key + "anneal_start", f"must be in (0, 1], got {self.anneal_start}")
        _check(self.target_schedule != "annealed" or self.targets or self.anneal_start >= self.target,
               key + "anneal_start", f"annealing goes down: {self.anneal_start} < target {self.target}")
        _check(self.anneal_step > 0, key + "anneal_step", "must be > 0")
        _check(self.anneal_every >= 1, key + "anneal_every", "must be >= 1")
        _check(0.0 <= self.target_ema < 1.0, key + "target_ema", "must be in [0, 1)")
        _check(all(0.0 < t <= 1.0 for t in self.unit_targets), key + "unit_targets", "each must be in (0, 1]")
        _check(not self.unit_targets or self.loss == "per_gate", key + "unit_targets", "needs loss=per_gate")
        _check(not self.unit_targets or self.target_schedule == "constant", key + "unit_targets",
               "needs target_schedule=constant")
        _check(self.weight >= 0, key + "weight", "must be >= 0")
        _check(0 < self.tau_end <= self.tau_start, key + "tau_end", "need 0 < tau_end <= tau_start")
        _check(self.gate_lr_mult > 0, key + "gate_lr_mult", "must be > 0")
        _check(self.final_bn_batches >= 0, key + "final_bn_batches", f"must be >= 0, got {self.final_bn_batches}")
        _check(self.gate_weight_decay is None or self.gate_weight_decay >= 0, key + "gate_weight_decay", "must be >= 0")
        _check(0.0 <= self.threshold <= 1.0, key + "threshold", "must be in [0, 1]")
        _check(self.runs >= 1, key + "runs", "must be >= 1")


@dataclass(frozen=True)
class MethodConfig:
    name: str = "adn"  # plain | stochastic_depth | adn | gated_depth | probgates
    plain: PlainConfig = field(default_factory=PlainConfig)
    stochastic_depth: StochasticDepthConfig = field(default_factory=StochasticDepthConfig)
    adn: ADNConfig = field(default_factory=ADNConfig)
    gated_depth: GatedDepthConfig = field(default_factory=GatedDepthConfig)
    probgates: ProbGatesConfig = field(default_factory=ProbGatesConfig)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking URI: a SQLite file here, or http://server
    experiment: str = "gatesearch"  # names the experiment's artifact directory of a sqlite:/// store
    run_name: str | None = None
    # CPU, memory, disk and network (and GPU where present) utilisation logged to the run every 10 s
    # (MLflow system metrics, shown in the run's "System metrics" tab)
    system_metrics: bool = False

    def __post_init__(self) -> None:
        check_path_name(self.experiment, "tracking.experiment")
        if self.run_name is not None:
            check_path_name(self.run_name, "tracking.run_name")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        _check(self.model.gating != "none" or self.method.name == "plain", "model.gating",
               f"none leaves no units to skip; method {self.method.name} needs stage or block (or use method plain)")
        if self.method.name == "probgates":
            _check(self.model.gate_head != "none", "model.gate_head", "probgates needs a learned gate: logit or aig")
        if self.model.gate_head == "aig":
            _check(self.model.gating == "block" or self.model.switchable_bn is False, "model.switchable_bn",
                   "aig gates decide inside the stage; use model.gating=block or model.switchable_bn=false")
        late = [m for m in self.optim.milestones if m >= self.train.epochs]
        _check(not late, "optim.milestones", f"epoch {late[0] if late else 0} is not before train.epochs={self.train.epochs}")
        _check_every_part_trains(self)


def _check_every_part_trains(cfg: Config) -> None:
    """Reject a recipe under which some trained part never receives a gradient (its trials would
    be scored on parameters left at their initialisation). ``plain``/``stochastic_depth`` are
    baselines and train what they train."""
    m = cfg.method
    if m.name == "gated_depth":
        gd = m.gated_depth
        # k=1: every step is Eq. 7's distillation step; the base-net skips the gated units, so they
        # learn only through the KL's full-network side, which needs teacher_grad and alpha < 1
        _check(gd.k > 1 or (gd.teacher_grad and gd.alpha < 1), "method.gated_depth.k",
               f"k=1 with method.gated_depth.teacher_grad={str(gd.teacher_grad).lower()} and method.gated_depth.alpha="
               f"{gd.alpha} makes every step a distillation step in which the gated units get no gradient; use k >= 2, "
               "or teacher_grad=true with alpha < 1")
    elif m.name == "adn":
        # the super-net is the detached teacher: with alpha=0 nothing trains the gated units
        _check(m.adn.alpha > 0, "method.adn.alpha", "alpha=0 leaves the gated units without a gradient (the super-net, "
               "their only path, is the detached teacher and gets no CE); use alpha in (0, 1)")
        switchable = cfg.model.switchable_bn if cfg.model.switchable_bn is not None else cfg.model.gating == "stage"
        _check(m.adn.alpha < 1 or not switchable, "method.adn.alpha", "alpha=1 drops the base-net's loss, so its "
               "skip-aware BN set (model.switchable_bn) never gets a gradient; use alpha < 1, or method.name=plain")


# ---------------------------------------------------------------- conversions


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one leaf value against its annotation; ConfigError names the key."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        _check(value in get_args(tp), key, f"must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, get_args(tp)[0], key) for v in items)
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        _check(math.isfinite(value), key, f"must be a finite number, got {value!r}")  # inf lr trains to NaN
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, nested: dict[str, Any], prefix: str) -> Any:
    if not isinstance(nested, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {nested!r}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in nested.items():
        dotted = prefix + str(key)
        if key not in hints:
            raise ConfigError(f"{dotted}: unknown config key")
        tp = hints[key]
        kwargs[key] = _build(tp, value, dotted + ".") if dataclasses.is_dataclass(tp) else _coerce(value, tp, dotted)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.')}: {e}") from None


def from_nested(nested: dict[str, Any] | None) -> Config:
    return _build(Config, nested or {}, "")


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {p} is a value, not a section")
        node[leaf] = value
    return nested


def from_flat(flat: dict[str, Any]) -> Config:
    return from_nested(nest(flat))


def to_nested(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_nested(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def to_flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            flat.update(to_flat(v, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = list(v) if isinstance(v, tuple) else v
    return flat


def flat_keys() -> set[str]:
    """Every valid dotted key (for validating search spaces key by key)."""
    return set(_keys(Config, ""))


def _keys(cls: type, prefix: str) -> list[str]:
    keys = []
    for name, tp in _hints(cls).items():
        keys += _keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [prefix + name]
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """``"method.adn.alpha=0.3"`` -> ``("method.adn.alpha", 0.3)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return key.strip(), raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        value = float(value)  # YAML 1.1 reads 1e30 (no dot) as a string
    return key.strip(), value


def parse_overrides(texts: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Every ``--set key=value``; a key given twice is refused (which one should win is a guess)."""
    out: dict[str, Any] = {}
    for text in texts:
        key, value = parse_override(text)
        if key in out:
            raise ConfigError(f"--set {key}: given twice ({out[key]!r} and {value!r}); give it once")
        out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping with a key written twice is an error (PyYAML keeps the
    last silently, so a second ``method:`` block would drop the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` of ``text`` (read from ``where``) that refuses a key written twice in one mapping;
    either problem is one ``ConfigError`` line naming ``where``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    except ConfigError as e:  # a key written twice
        raise ConfigError(f"{where}: {e}") from None


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    flat = to_flat(cfg)
    flat.update(overrides)
    return from_flat(flat)


def read_utf8(path: Path, what: str) -> str:
    """The text of ``path``; a file that is not UTF-8 (a binary, a Latin-1 export) is one ConfigError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None


def load(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or start from defaults) and apply ``key=value`` overrides."""
    nested: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        nested = load_yaml(read_utf8(p, "config file"), str(p)) or {}
    cfg = from_nested(nested)
    return with_overrides(cfg, parse_overrides(overrides)) if overrides else cfg
