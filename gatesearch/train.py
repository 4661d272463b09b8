"""``fit()``: the one training loop. It knows no method (``methods.METHODS`` builds one from the
config), no Ray and no MLflow (``reporters`` receive progress; ``tracking.MLflowReporter`` is one).

Per epoch: train ``steps_per_epoch`` steps (SGD/AdamW, warm-up + cosine/step/multistep/constant lr
per step, optionally no weight decay on norms and biases; AMP on CUDA only, in evaluation too with
``train.amp_eval``; channels-last on CPU and CUDA; ``train.compile``: the method's model calls
through ``torch.compile``; ``train.cudnn_benchmark`` on CUDA), evaluate every pattern (or super/base), write ``<train.out_dir>/last.pt`` atomically, and hand
the metrics to the reporters. With ``train.ema_decay`` > 0 an EMA of the weights is what is
evaluated, checkpointed (with the optimizer's weights beside it) and returned. ``model.init_from``
starts from a torchvision ResNet state dict (``models/torchvision_init.py``). A non-finite
loss raises ``TrainingDiverged`` before the optimizer steps, so the last checkpoint on disk is
the last good one.
"""

from __future__ import annotations

import copy
import ctypes
import math
import random
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gatesearch.checkpoint import build_model, load_checkpoint, save_checkpoint
from gatesearch.config import Config, OptimConfig
from gatesearch.cost import CandidateCosts
from gatesearch.data import DataBundle, build_data, eval_loader, rank_seed, shard_bundle
from gatesearch.data import describe as describe_data
from gatesearch.errors import UserError
from gatesearch.evaluate import candidate_table, kl_between, ladder, table_metrics
from gatesearch.methods import METHODS, Method
from gatesearch.models.norm import convert_sync_bn
from gatesearch.models.torchvision_init import load_torchvision_file
from gatesearch.parallel import barrier, broadcast_state_, is_main, mean_over_ranks, rank_world
from gatesearch.patterns import SkipPattern, all_patterns
from gatesearch.resolve import check_names
from gatesearch.schedules import lr_factor


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept on disk."""


class Reporter(Protocol):
    """Receives progress from ``fit``. An optional ``on_fail(error)`` is called when fit raises."""

    def on_start(self, cfg: Config, info: dict[str, Any]) -> None: ...

    def on_step(self, step: int, epoch: int, parts: dict[str, float]) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint_path: Path) -> None: ...

    def on_end(self, result: FitResult) -> None: ...


@dataclass
class FitResult:
    model: nn.Module  # the evaluated weights: the weight EMA when train.ema_decay > 0
    metrics: dict[str, float]  # of the last epoch
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: Path | None = None
    method: Method | None = None  # for eval_gates (e.g. calibrated super-net gates) after training


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {name} requested but CUDA is not available")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """``train.amp``'s autocast dtype on ``device``: bf16 where the GPU has it (no loss scaling), else
    fp16 (scaled); ``None`` (full fp32) off CUDA or with amp off."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; a no-op context for ``None``."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def no_decay_parameters(model: nn.Module) -> set[int]:
    """``id``s of the parameters ``optim.no_decay_norm_bias`` exempts from weight decay: every
    parameter of a normalisation layer and every ``bias`` (torchvision references'
    ``set_weight_decay`` with ``--norm-weight-decay 0 --bias-weight-decay 0``, as ADN's official
    ResNet and MobileNetV2 commands run)."""
    return {id(p) for mod in model.modules() for name, p in mod.named_parameters(recurse=False)
            if isinstance(mod, _NORMS) or name == "bias"}


def _split_no_decay(groups: list[dict], exempt: set[int]) -> list[dict]:
    """Each group split in two: its decayed parameters, and the exempt ones with ``weight_decay`` 0."""
    out = []
    for g in groups:
        params = list(g["params"])
        decay, rest = [p for p in params if id(p) not in exempt], [p for p in params if id(p) in exempt]
        out += [{**g, "params": decay}] if decay else []
        out += [{**g, "params": rest, "weight_decay": 0.0}] if rest else []
    return out


def build_optimizer(cfg: OptimConfig, groups: list[dict], model: nn.Module | None = None) -> torch.optim.Optimizer:
    """Optimizer over the method's groups; a group's ``lr_mult`` scales the base lr (kept as ``base_lr``).
    ``model``: needed for ``cfg.no_decay_norm_bias`` (which parameters are norms and biases)."""
    if cfg.no_decay_norm_bias:
        if model is None:
            raise ValueError("optim.no_decay_norm_bias needs the model")
        groups = _split_no_decay(groups, no_decay_parameters(model))
    for g in groups:
        g["base_lr"] = cfg.lr * g.get("lr_mult", 1.0)
        g["lr"] = g["base_lr"]
        g.setdefault("weight_decay", cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class _Evaluator:
    """Per-epoch evaluation through ``evaluate.candidate_table`` (the path the selector uses too):
    ``top1_<candidate>`` / ``cost_<candidate>`` of every candidate the model deploys (every pattern
    up to ``train.eval_all_patterns_max_units`` units, else the ladder; the calibrated full network;
    probgates' strategies), ``frontier_score`` over them, ``top1_super``/``top1_base``, ``kl_full_base``."""

    def __init__(self, cfg: Config, model: nn.Module, data: DataBundle, method: Method, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.cfg, self.data, self.method, self.device = cfg, data, method, device
        self.amp_dtype = amp_dtype  # every evaluation pass runs under this autocast (train.amp_eval)
        n = model.n_units
        self.patterns = all_patterns(n) if n <= cfg.train.eval_all_patterns_max_units else ladder(n)
        self.costs = CandidateCosts(model, data.input_shape, cfg.train.score_cost)

    def table(self, model: nn.Module, loader: Iterable | None = None) -> list:
        """Every candidate scored on ``loader`` (default: the evaluation split)."""
        return candidate_table(model, self.method, eval_loader(self.data) if loader is None else loader, self.device,
                               input_shape=self.data.input_shape, patterns=self.patterns,
                               bn_loader=self.data.train_full or self.data.train,
                               bn_batches=self.cfg.train.bn_reestimate_batches, seed=self.cfg.train.seed,
                               costs=self.costs)

    def test_metrics(self, model: nn.Module) -> dict[str, float]:
        """``train.final_test``: ``test_top1_<candidate>``, ``test_cost_<candidate>``, ``test_frontier_score``
        and ``test_n`` (the split's image count, for binomial intervals) on the test split."""
        with autocast(self.device, self.amp_dtype):
            rows = self.table(model, self.data.test)
        return {f"test_{k}": v for k, v in table_metrics(rows).items()} | {"test_n": float(rows[0].n) if rows else 0.0}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        with autocast(self.device, self.amp_dtype):
            return self._metrics(model)

    def _metrics(self, model: nn.Module) -> dict[str, float]:
        rows = self.table(model)
        n = model.n_units
        sup, base = SkipPattern.super_net(n), SkipPattern.base_net(n)
        m = table_metrics(rows)
        m["top1_super"], m["top1_base"] = m[f"top1_{sup}"], m[f"top1_{base}"]
        loader = eval_loader(self.data)
        if n > 0:
            m["kl_full_base"] = kl_between(model, loader, self.method.eval_gates(model, sup), base, self.device)
        m.update(self.method.eval_metrics(model, loader, self.device))
        opts = self.cfg.method.probgates
        if model.gate_heads is not None:  # the configured inference strategy, from the same table
            name = f"threshold_{opts.threshold:.2f}" if opts.inference == "threshold" else opts.inference
            m["top1_gated"], m["cost_gated"] = m[f"top1_{name}"], m[f"cost_{name}"]
        return m


def restore_method(cfg: Config, model: nn.Module, data: DataBundle, state: dict[str, float]) -> Method:
    """The method object of a trained model (for ``eval_gates``, e.g. Gated Depth's calibration),
    rebuilt as ``fit`` built it, with its saved ``state``."""
    method = METHODS.get(cfg.method.name)(cfg, model, _steps_per_epoch(cfg, data))
    method.load_state_dict(state)
    return method


def _steps_per_epoch(cfg: Config, data: DataBundle) -> int:
    n = len(data.train)
    if n == 0:
        raise UserError(f"data.batch_size: {cfg.data.batch_size} is larger than the training set; no full batch")
    return min(n, cfg.train.max_steps_per_epoch or n)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process rather than hand it back to the kernel.

    PyTorch's CPU tensors come straight from malloc, and glibc returns large freed blocks (mmap'd
    ones, and heap top beyond ``M_TRIM_THRESHOLD``) to the kernel, so every training step faults
    its activations in again, ADN's two sub-networks more than one (``benchmarks/train_step.py
    --keep-freed-memory off|on``). Raising both thresholds keeps the
    blocks for reuse, as CUDA's caching allocator does; the process holds its peak, which it
    reaches every step anyway. Blocks over 32 MiB (glibc's cap) are still mapped per use.
    Returns whether it took effect: glibc only, a no-op elsewhere; process-wide and idempotent.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def compile_recompile_limit(n_units: int, default: int) -> int:
    """Graphs ``train.compile`` keeps per compiled function: one per skip pattern for up to 4 units
    (2^4 = 16, ResNet-50's stage gating; +2 for the all-on and keep-tensor calls), dynamo's ``default``
    above that: with 2^9 patterns (block gating) a compile per new pattern would cost more than it
    saves, so after ``default`` of them the rest run eagerly."""
    return max(default, 2 ** n_units + 2) if n_units <= 4 else default


class CompiledModel:
    """What a method's ``train_step`` sees under ``train.compile``: ``model`` with the three calls a
    method makes into it (``model(x, gates)``, ``forward_patterns``, ``forward_from_stem``) each through
    ``torch.compile`` (AOTAutograd compiles their backward too); any other attribute is the model's
    own, and the weights are shared, so the optimizer, the EMA and the checkpoint see ``model``.

    A ``SkipPattern`` is a Python value, so dynamo specialises one graph per pattern (skipped units
    are not in it); a keep tensor is an input of one graph. A step re-traces only on a pattern (or
    shape) not seen before, at most ``2**n_units`` times; ``recompile_limit`` graphs per function
    (``compile_recompile_limit``) are compiled, later new patterns run eagerly
    (``benchmarks/compile_recompiles.py`` counts them per method)."""

    def __init__(self, model: nn.Module, backend: str) -> None:
        import torch._dynamo  # lazy: 1.5 s of import that only train.compile needs

        self.model = model
        self._config = torch._dynamo.config  # patched for our calls only: other compiled code keeps its limit
        self._limit = compile_recompile_limit(model.n_units, self._config.recompile_limit)
        self._forward = torch.compile(model.forward, backend=backend)
        self._forward_patterns = torch.compile(model.forward_patterns, backend=backend)
        self._forward_from_stem = torch.compile(model.forward_from_stem, backend=backend)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._config.patch(recompile_limit=self._limit):
            return self._forward(*args, **kwargs)

    def forward_patterns(self, *args: Any, **kwargs: Any) -> Any:
        with self._config.patch(recompile_limit=self._limit):
            return self._forward_patterns(*args, **kwargs)

    def forward_from_stem(self, *args: Any, **kwargs: Any) -> Any:
        with self._config.patch(recompile_limit=self._limit):
            return self._forward_from_stem(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # only for what __init__ did not set
        return getattr(self.model, name)


class _Calls(nn.Module):
    """The model's entry points behind one ``forward(name, ...)``, so that DDP wraps each of them;
    ``calls`` (a ``CompiledModel`` of ``model``, else ``model`` itself) is what runs them."""

    def __init__(self, model: nn.Module, calls: Any = None) -> None:
        super().__init__()
        self.model = model  # registered: DDP's parameters and buffers
        self._run = model if calls is None else calls

    def forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._run, name)(*args, **kwargs)


class DistributedModel:
    """What a method's ``train_step`` sees under data parallelism (a process group of ``W > 1`` ranks):
    ``model`` inside ``DistributedDataParallel``, each of the three calls a method makes
    (``model(x, gates)``, ``forward_patterns``, ``forward_from_stem``) through DDP's forward, so the
    backward averages the gradients over the ranks; any other attribute (``stem``, ``gate_heads``,
    ``n_units``) is the model's own. DDP broadcasts rank 0's weights and buffers when it is built.

    ``find_unused_parameters=True``: a skipped unit (Gated Depth, stochastic depth, ADN's base-net) and
    the unused set of a switchable BN get no gradient, a different set each step, so no static graph
    fits; DDP then leaves the globally unused parameters' ``.grad`` as one process leaves it (``None``:
    no weight decay and no momentum step on them) instead of all-reducing zeros
    (``docs/DESIGN_NOTES.md`` item 46, measured in ``benchmarks/ddp_unused.py``).

    ``calls``: under ``train.compile`` the ``CompiledModel`` of ``model``, run inside DDP's forward
    (PyTorch's advice: compile the module DDP wraps, not DDP). DDP's hooks fire on each parameter's
    gradient as in eager mode; a compiled graph holds only the parameters its pattern uses, so the
    unused set is eager's. The gradients are all-reduced after the compiled backward, not overlapped
    with it."""

    def __init__(self, model: nn.Module, device: torch.device, calls: Any = None) -> None:
        self.model = model
        ids = None if device.type != "cuda" else [device.index if device.index is not None else torch.cuda.current_device()]
        self.ddp = DistributedDataParallel(_Calls(model, calls), device_ids=ids, find_unused_parameters=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp("forward", *args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp("forward", *args, **kwargs)

    def forward_patterns(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp("forward_patterns", *args, **kwargs)

    def forward_from_stem(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp("forward_from_stem", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # only for what __init__ did not set
        return getattr(self.model, name)


class Trainer:
    """Holds what one training epoch needs: model (put in the configured memory layout), the model
    the method calls (``CompiledModel`` under ``train.compile``), method, optimizer, scaler, autocast."""

    def __init__(self, cfg: Config, model: nn.Module, method: Method, optimizer: torch.optim.Optimizer,
                 device: torch.device, steps: int) -> None:
        self.cfg, self.model, self.method, self.optimizer, self.device, self.steps = cfg, model, method, optimizer, device, steps
        if device.type == "cuda":  # process-wide; left alone off CUDA
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        self.channels_last = cfg.train.channels_last  # faster on CPU (oneDNN) as well as on CUDA
        if self.channels_last:  # in place: the optimizer keeps the same parameters
            model.to(memory_format=torch.channels_last)
        if device.type == "cpu" and cfg.train.keep_freed_memory:
            keep_freed_memory()
        calls = None if cfg.train.compile == "off" else CompiledModel(model, cfg.train.compile)
        if rank_world()[1] > 1:
            self.step_model: Any = DistributedModel(model, device, calls)
        else:
            self.step_model = model if calls is None else calls
        self.amp_dtype = autocast_dtype(device, cfg.train.amp)  # None: fp32
        self.eval_amp_dtype = self.amp_dtype if cfg.train.amp_eval else None
        # bf16 autocast needs no loss scaling; fp16 (older GPUs) does
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.total = steps * cfg.train.epochs
        self.warmup = steps * cfg.optim.warmup_epochs
        self.milestones = [m * steps for m in cfg.optim.milestones]  # epochs -> steps
        self.ema: WeightEMA | None = None  # fit sets one when train.ema_decay > 0

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation and the checkpoint see: the weight EMA when there is one."""
        return self.model if self.ema is None else self.ema.model

    def _set_lr(self, step: int) -> float:
        o = self.cfg.optim
        f = lr_factor(step, self.total, self.warmup, o.schedule, self.milestones, o.gamma)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        return self.optimizer.param_groups[0]["lr"]

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int) -> dict[str, float]:
        """One optimizer step on batch ``x [B, C, H, W]``, ``y [B]``; returns the logged parts."""
        lr = self._set_lr(step)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            res = self.method.train_step(self.step_model, x, y, step, epoch, self._backward)
        loss = res.loss.detach().item() if res.loss is not None else float(res.parts["loss"])
        # data parallelism: the global batch's parts (every rank the same, so all stop together)
        parts = mean_over_ranks({**res.parts, "loss": loss})
        loss = parts["loss"]
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training diverged: loss is {loss} at epoch {epoch}, step {step} "
                                   f"(lower optim.lr?); the last good checkpoint is kept")
        if res.loss is not None:
            self._backward(res.loss)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return {**parts, "lr": lr}

    def epoch(self, loader: Any, epoch: int, reporters: Sequence[Reporter]) -> tuple[float, float]:
        """Train one epoch; returns (mean loss, last lr)."""
        self.model.train()
        total, n, lr = 0.0, 0, 0.0
        for i, (x, y) in enumerate(loader):
            if i >= self.steps:
                break
            parts = self.step(x, y, epoch * self.steps + i, epoch)
            total, n, lr = total + parts["loss"], n + 1, parts["lr"]
            for r in reporters:
                r.on_step(epoch * self.steps + i, epoch, parts)
        return total / max(n, 1), lr


class WeightEMA:
    """An exponential moving average of a model's weights, the copy that is evaluated and
    checkpointed when ``train.ema_decay`` = ``d`` > 0 (Polyak & Juditsky 1992; the ``--model-ema`` of
    torchvision's references and of ADN's official ViT/Swin/ResNet-v2 commands). After every
    optimizer step each floating tensor of the state, BN running statistics included (torchvision's
    ``use_buffers=True``), moves ``ema <- d * ema + (1 - d) * w``; integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model)  # after the memory-layout change, so both share it
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        floats = [(e, w) for e, w in pairs if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [w for _, w in floats], 1.0 - self.decay)
        for e, w in pairs:
            if not e.is_floating_point():
                e.copy_(w)


def _resume(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, method: Method,
            ema: WeightEMA | None) -> tuple[int, list[dict[str, float]]]:
    """Load weights/optimizer/method state (and the weight EMA); returns (first epoch to run, history so far)."""
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt.train_weights if ckpt.train_weights is not None else ckpt.model.state_dict())
        if ema is not None:  # a checkpoint without an EMA starts it from the trained weights
            ema.model.load_state_dict(ckpt.model.state_dict() if ckpt.weights == "ema" else model.state_dict())
        if ckpt.optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--resume {path}: does not match this config ({str(e).splitlines()[0]})") from None
    method.load_state_dict(ckpt.method_state)
    return ckpt.epoch + 1, list(ckpt.history)


def fit(cfg: Config, reporters: Sequence[Reporter] = (), resume_from: str | Path | None = None) -> FitResult:
    """Train ``cfg`` from scratch (or from the checkpoint ``resume_from``); see the module docstring.

    Data parallelism: called in every rank of an initialised ``torch.distributed`` process group
    (``W > 1`` ranks, e.g. inside each Ray Train worker), the ranks train one model together:
    ``data.batch_size`` is the global mini-batch, each rank trains on its ``1/W`` slice of every step's
    batch (``data.shard_bundle``) through DDP (``DistributedModel``), evaluates its share of the split
    with the counts summed over the ranks, so every rank gets the same metrics, the ones one process
    gets; rank 0 alone writes the checkpoint. Every rank calls its reporters with those metrics; the
    checkpoint exists when ``on_epoch_end`` runs on any rank (``FitResult.checkpoint_path`` is rank 0's
    only). ``docs/DESIGN_NOTES.md`` item 46."""
    check_names(cfg)  # before any data is read
    rank, world = rank_world()
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    data = shard_bundle(build_data(cfg.data, cfg.train.seed, device), cfg.data.batch_size, cfg.train.seed)
    model = build_model(cfg, data.num_classes, data.input_shape)
    if cfg.model.init_from and not resume_from:
        load_torchvision_file(model, cfg.model.init_from)
    if cfg.model.sync_bn and world > 1:
        convert_sync_bn(model)
    model.to(device)
    steps = _steps_per_epoch(cfg, data)
    method = METHODS.get(cfg.method.name)(cfg, model, steps)
    if rank > 0:  # what each rank draws on its own (crops, flips) differs; rank 0 draws as one process
        seed_everything(rank_seed(cfg.train.seed, rank))
    optimizer = build_optimizer(cfg.optim, method.param_groups(model), model)
    trainer = Trainer(cfg, model, method, optimizer, device, steps)
    if cfg.train.ema_decay > 0:
        trainer.ema = WeightEMA(model, cfg.train.ema_decay)
    start, history = _resume(resume_from, model, optimizer, method, trainer.ema) if resume_from else (0, [])
    evaluator = _Evaluator(cfg, model, data, method, device, trainer.eval_amp_dtype)
    path = Path(cfg.train.out_dir) / "last.pt"
    info = {"device": str(device), "steps_per_epoch": steps, "rank": rank, "world_size": world, "start_epoch": start, "n_units": model.n_units,
            "num_classes": data.num_classes, "input_shape": data.input_shape,
            "params": sum(p.numel() for p in model.parameters()),
            "datasets": describe_data(cfg.data, data),  # what each split is (MLflow dataset inputs)
            "history": list(history)}  # a resumed run's epochs so far (a reporter may not have sent them all)
    for r in reporters:
        r.on_start(cfg, info)
    try:
        for epoch in range(start, cfg.train.epochs):
            history.append(_run_epoch(cfg, trainer, evaluator, data, epoch, history, reporters))
            if is_main():
                save_checkpoint(path, trainer.eval_model, cfg, epoch=epoch, metrics=history[-1], optimizer=optimizer,
                                input_shape=data.input_shape, num_classes=data.num_classes, history=history,
                                method_state=method.state_dict(),
                                train_weights=None if trainer.ema is None else model.state_dict())
            barrier()  # the checkpoint is on disk before any rank reports the epoch
            for r in reporters:
                r.on_epoch_end(epoch, history[-1], path)
    except BaseException as e:
        for r in reporters:
            getattr(r, "on_fail", lambda err: None)(e)
        raise
    result = FitResult(trainer.eval_model, history[-1] if history else {}, history,
                       path if is_main() and path.is_file() else None, method)
    for r in reporters:
        r.on_end(result)
    return result


def _run_epoch(cfg: Config, trainer: Trainer, evaluator: _Evaluator, data: DataBundle, epoch: int,
               history: list[dict[str, float]], reporters: Sequence[Reporter]) -> dict[str, float]:
    t0 = time.perf_counter()
    loss, lr = trainer.epoch(data.train, epoch, reporters)
    train_s = time.perf_counter() - t0
    metrics = {"train_loss": loss, "lr": lr}
    last = epoch == cfg.train.epochs - 1
    if last:  # a method's final step (probgates: 002 Sec. 4.1.1's BN statistics), before it is evaluated and saved
        trainer.method.finish_training(trainer.eval_model, data.train_full or data.train, trainer.device)
    # data parallelism: every rank evaluates and rank 0 saves rank 0's model (the weights are the same on
    # every rank; BN running statistics and what finish_training re-estimated are each rank's own)
    broadcast_state_(trainer.eval_model)
    if (epoch + 1) % cfg.train.eval_every == 0 or last:
        metrics.update(evaluator(trainer.eval_model))
    if last and cfg.train.final_test:
        metrics.update(evaluator.test_metrics(trainer.eval_model))
    metrics["epoch_time_s"] = time.perf_counter() - t0
    metrics["train_time_s"] = (history[-1]["train_time_s"] if history else 0.0) + train_s
    return metrics


class ConsoleReporter:
    """A tqdm progress bar per epoch and one line of metrics at each epoch's end (on stderr)."""

    KEYS = ("train_loss", "top1_super", "top1_base", "frontier_score", "kl_full_base", "gate_rate_mean", "top1_gated")

    def __init__(self, log_every: int = 20) -> None:
        self.log_every, self.bar, self.steps, self.epochs = log_every, None, 0, 0

    def on_start(self, cfg: Config, info: dict[str, Any]) -> None:
        self.steps, self.epochs = info["steps_per_epoch"], cfg.train.epochs
        print(f"train {cfg.method.name} {cfg.model.name} on {cfg.data.name}: {self.epochs} epochs x {self.steps} "
              f"steps, {info['n_units']} units, {info['params'] / 1e6:.2f} M params, device {info['device']}",
              file=sys.stderr)

    def on_step(self, step: int, epoch: int, parts: dict[str, float]) -> None:
        from tqdm import tqdm  # lazy: only an interactive terminal gets a bar

        if self.bar is None:
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", file=sys.stderr, leave=False)
        self.bar.update(1)
        if step % self.log_every == 0:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in parts.items()})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint_path: Path) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        shown = "  ".join(f"{k}={metrics[k]:.4g}" for k in self.KEYS if k in metrics)
        print(f"epoch {epoch + 1}/{self.epochs}  {shown}  ({metrics['epoch_time_s']:.1f} s)", file=sys.stderr)

    def on_end(self, result: FitResult) -> None:
        print(f"checkpoint: {result.checkpoint_path}", file=sys.stderr)

    def on_fail(self, error: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
