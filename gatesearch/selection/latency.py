"""Latency of sub-networks: measured on this host, modelled for a device profile, or looked up.

Three sources, recorded per menu entry as ``latency_source``:

- ``measured``: timed here (warm-up, several interleaved runs, median and p90);
- ``lut``: a lookup table measured on the target with ``gatesearch profile`` (CSV, see
  ``read_lut``); a LUT entry always wins over the model;
- ``model``: a per-layer roofline on a ``DeviceProfile``. Every leaf module that runs under the
  pattern is captured by forward hooks (inside ``torch.utils.flop_counter`` for its FLOPs), plus
  one memory-only step per residual add; an attention module (``nn.MultiheadAttention``, the
  ViT's ``SelfAttention``, Swin's ``ShiftedWindowAttention``) is one layer holding all of its
  FLOPs (projections and attention matmuls, partly functional calls no leaf hook sees), and

      t_layer = max(flops / (peak * efficiency), bytes / bandwidth) + launch_overhead

  summed over layers (Williams et al., "Roofline", CACM 2009). Profiles that deploy through a
  fusing runtime (TensorRT on Jetson / datacenter GPUs) fold BN, ReLU / GELU and the add into the
  conv or matmul; LayerNorm is not folded (it normalises with its own input's statistics, so unlike
  inference BN it is no affine map a matmul can absorb) and stays a kernel.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import statistics
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import torch
import yaml
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from gatesearch.errors import UserError
from gatesearch.flops import flop_counter
from gatesearch.models import GatedResNet, Gates
from gatesearch.models.vit import SelfAttention
from gatesearch.patterns import SkipPattern
from gatesearch.registry import Registry

# ----------------------------------------------------------------- device profiles


@dataclass(frozen=True)
class DeviceProfile:
    """Figures a roofline needs. ``peak_tflops_*`` dense, ``mem_bandwidth_gbs`` in GB/s,
    ``launch_overhead_us`` per kernel, ``efficiency`` the fraction of peak compute a conv reaches."""

    name: str
    description: str
    peak_tflops_fp16: float
    peak_tflops_fp32: float
    mem_bandwidth_gbs: float
    launch_overhead_us: float
    efficiency: float
    precision: str = "fp16"  # the precision the model assumes the network runs in
    fused_elementwise: bool = True  # BN / ReLU / residual add fused into the conv (TensorRT)
    aliases: tuple[str, ...] = ()
    source: str = ""
    measure: bool = False  # host: figures come from a micro-benchmark on this machine
    module_overhead_us: float = 0.0  # eager runtimes: Python cost of each container module call
    conv_overhead_us: float = 0.0  # extra fixed cost of a conv/linear kernel (setup, im2col) on top

    @property
    def peak_flops(self) -> float:
        return 1e12 * (self.peak_tflops_fp16 if self.precision == "fp16" else self.peak_tflops_fp32)

    @property
    def bytes_per_element(self) -> int:
        return 2 if self.precision == "fp16" else 4


_FIELDS = {f for f in DeviceProfile.__dataclass_fields__}


def _parse_profile(text: str, origin: str) -> DeviceProfile:
    raw = yaml.safe_load(text) or {}
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ValueError(f"{origin}: unknown device profile keys {sorted(unknown)}")
    raw["aliases"] = tuple(raw.get("aliases", ()))
    for key in ("peak_tflops_fp16", "peak_tflops_fp32", "mem_bandwidth_gbs", "launch_overhead_us", "efficiency",
                "module_overhead_us", "conv_overhead_us"):
        raw[key] = float(raw.get(key) or 0.0)
    prof = DeviceProfile(**raw)
    if prof.precision not in ("fp16", "fp32"):
        raise ValueError(f"{origin}: precision must be fp16 or fp32")
    return prof


def _load_devices() -> Registry[DeviceProfile]:
    reg: Registry[DeviceProfile] = Registry("device")
    folder = resources.files("gatesearch.selection").joinpath("devices")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            prof = _parse_profile(entry.read_text(), entry.name)
            for name in (prof.name, *prof.aliases):
                reg.add(name, prof)
    return reg


DEVICES: Registry[DeviceProfile] = _load_devices()


def get_device(name: str) -> DeviceProfile:
    """The profile for ``name`` (or an alias); ``host`` gets its figures measured (once per process)."""
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; known: {', '.join(DEVICES.names())}")
    prof = DEVICES.get(name)
    return host_profile(prof) if prof.measure else prof


def device_profiles() -> list[DeviceProfile]:
    """Each profile once (aliases folded), sorted by name; ``host`` unmeasured."""
    seen = {DEVICES.get(n).name: DEVICES.get(n) for n in DEVICES.names()}
    return [seen[k] for k in sorted(seen)]


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _median_call(fn, n: int = 300) -> float:
    calls = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        calls.append(time.perf_counter() - t0)
    return statistics.median(calls)


#: Generic 3x3 conv shapes (channels, spatial) for the host micro-benchmark: 16-256 channels,
#: 7-56 pixels, 2-460 MFLOP, chosen once as a spread of CNN layer sizes, not from the scored networks.
_EFF_CONVS = ((16, 32), (16, 16), (32, 32), (32, 16), (64, 16), (64, 8), (64, 56), (128, 28), (128, 8),
              (256, 14), (256, 7))


@functools.lru_cache(maxsize=4)
def _host_figures(threads: int) -> tuple[float, float, float, float, float, float]:
    """(peak FLOP/s, bandwidth B/s, kernel overhead s, conv efficiency, module-call overhead s,
    conv overhead s), measured once per thread count (the caller's ``torch.get_num_threads()``).

    Every figure is a median over repeats, the statistic the latency measurements report, so
    both see the same load on a shared machine. Peak: fp32 matmul of 512^3 and 1024^3 (the
    faster). Bandwidth: a copy of 128 MB (read + write).
    Kernel overhead: median module call of a ReLU on one element. Module overhead: median call of
    a container module minus that of the leaf it calls. Conv efficiency and conv overhead: the line
    time = kernel + conv_overhead + flops / (peak * eff) fitted by relative least squares through
    the median times of the ``_EFF_CONVS`` convs (batch 1), so small and large convs count alike.
    """
    with torch.no_grad():
        peak = 0.0
        for n in (512, 1024):
            a, b = torch.randn(n, n), torch.randn(n, n)
            a @ b
            peak = max(peak, 2 * n**3 / _median_call(lambda a=a, b=b: a @ b, 15))
        src, dst = torch.randn(32 * 2**20), torch.empty(32 * 2**20)
        dst.copy_(src)
        bw = 2 * src.numel() * 4 / _median_call(lambda: dst.copy_(src), 9)
        one = torch.randn(1, 1, 1, 1)
        wrapper = _Wrapper()
        module = max(0.0, _median_call(lambda: wrapper(one)) - _median_call(lambda: wrapper.inner(one)))
        relu = nn.ReLU()
        kernel = _median_call(lambda: relu(one))
        flops, secs = [], []
        for c, hw in _EFF_CONVS:
            conv, x = nn.Conv2d(c, c, 3, padding=1, bias=False), torch.randn(1, c, hw, hw)
            conv(x)
            flops.append(2 * c * c * 9 * hw * hw)
            secs.append(_median_call(lambda conv=conv, x=x: conv(x), 15))
    intercept, slope = _relative_fit(flops, secs)
    eff = min(1.0, 1.0 / (slope * peak)) if slope > 0 else 1.0
    return peak, bw, kernel, eff, module, max(intercept - kernel, 0.0)


def _relative_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(a, b) minimising sum(((a + b x - y) / y)^2): weighted least squares, weights 1 / y^2."""
    w = [1.0 / v**2 for v in y]
    sw, sx, sy = sum(w), sum(wi * xi for wi, xi in zip(w, x)), sum(wi * yi for wi, yi in zip(w, y))
    sxx = sum(wi * xi * xi for wi, xi in zip(w, x))
    sxy = sum(wi * xi * yi for wi, xi, yi in zip(w, x, y))
    b = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
    return (sy - b * sx) / sw, b


def host_profile(base: DeviceProfile) -> DeviceProfile:
    peak, bw, overhead, eff, module, conv = _host_figures(torch.get_num_threads())
    return replace(base, description=f"{base.description}, {torch.get_num_threads()} thread(s)",
                   peak_tflops_fp32=peak / 1e12, peak_tflops_fp16=peak / 1e12, mem_bandwidth_gbs=bw / 1e9,
                   launch_overhead_us=overhead * 1e6, efficiency=eff, precision="fp32", measure=False,
                   module_overhead_us=module * 1e6, conv_overhead_us=conv * 1e6)


# ----------------------------------------------------------------- per-layer trace and model


@dataclass(frozen=True)
class Layer:
    """One layer of a forward pass: ``flops`` (2 x MACs), ``elements`` moved (params + in + out, and
    for attention its q, k, v), and the ``kernels`` it launches."""

    name: str
    kind: str  # conv | linear | norm | layernorm | act | attn | pool | add | noop | other | call (container)
    flops: int
    elements: int
    kernels: int = 1


#: Attention modules traced as one layer, with the kernels each launches: input projection, fused
#: attention, output projection (Swin's window attention runs QK^T, bias add, softmax and PV as
#: separate ops, plus the shift and window partition copies: counted as 8).
_ATTENTION_KERNELS: dict[type, int] = {nn.MultiheadAttention: 3, SelfAttention: 3, ShiftedWindowAttention: 8}


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "norm"
    if isinstance(m, nn.LayerNorm):
        return "layernorm"
    if isinstance(m, (nn.Dropout, nn.Identity)):
        return "noop"  # identity at inference: no kernel runs
    if isinstance(m, tuple(_ATTENTION_KERNELS)):
        return "attn"
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU)):
        return "act"
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "pool"
    return "other"


def _numel(t: object) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel()
    if isinstance(t, (tuple, list)):
        return sum(_numel(v) for v in t)
    return 0


@torch.no_grad()
def trace_layers(model: nn.Module, gates: Gates, input_shape: tuple[int, ...]) -> list[Layer]:
    """The kernels one forward of ``[B, C, H, W]`` runs under ``gates``, in order."""
    layers: list[Layer] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []
    with flop_counter() as counter:
        start: dict[nn.Module, int] = {}

        def pre(m: nn.Module, args: tuple) -> None:
            start[m] = counter.get_total_flops()

        def post(m: nn.Module, args: tuple, out: object) -> None:
            kind = _kind(m)
            recurse = kind == "attn"  # an attention layer reads all of its projections' weights
            params = sum(p.numel() for p in m.parameters(recurse)) + sum(b.numel() for b in m.buffers(recurse))
            flops = counter.get_total_flops() - start.pop(m)
            moved = params + _numel(args) + _numel(out)
            if recurse:  # q, k, v written by the input projection and read by the attention kernel
                moved += 6 * _numel(args[0])
            layers.append(Layer(names[m], kind, flops, moved, _ATTENTION_KERNELS.get(type(m), 1)))

        def call(m: nn.Module, args: tuple, out: object) -> None:
            layers.append(Layer(names[m], "call", 0, 0))

        def add(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            for _ in range(m.residual_adds):  # the block's residual additions (GatedNet protocol)
                layers.append(Layer(names[m] + ".add", "add", 0, 3 * out.numel()))

        inside_attention = {id(d) for m in model.modules() if _kind(m) == "attn" for d in m.modules() if d is not m}
        for m in model.modules():
            if id(m) in inside_attention:
                continue  # counted by the attention layer that holds it
            if next(m.children(), None) is None or _kind(m) == "attn":
                hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
                continue
            hooks.append(m.register_forward_hook(call))
            if getattr(m, "residual_adds", 0):
                hooks.append(m.register_forward_hook(add))
        was_training = model.training
        model.eval()
        try:
            p = next(model.parameters())
            model(torch.zeros(input_shape, device=p.device, dtype=p.dtype), gates)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
    return layers


_FUSED_KINDS = ("norm", "act", "add")


def predict_ms(layers: Sequence[Layer], profile: DeviceProfile) -> float:
    """Roofline sum over ``layers`` on ``profile``, in milliseconds."""
    peak = profile.peak_flops * profile.efficiency
    bw = profile.mem_bandwidth_gbs * 1e9
    total = 0.0
    for layer in layers:
        if layer.kind == "call":
            total += profile.module_overhead_us * 1e-6
            continue
        if layer.kind == "noop" or (profile.fused_elementwise and layer.kind in _FUSED_KINDS):
            continue
        total += max(layer.flops / peak, layer.elements * profile.bytes_per_element / bw)
        total += layer.kernels * profile.launch_overhead_us * 1e-6
        if layer.kind in ("conv", "linear"):
            total += profile.conv_overhead_us * 1e-6
    return 1e3 * total


def bytes_moved(layers: Sequence[Layer], bytes_per_element: int = 4) -> int:
    """Weights + activations read and written by the kernels, in bytes."""
    return sum(layer.elements for layer in layers) * bytes_per_element


# ----------------------------------------------------------------- measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_ms(
    model: nn.Module, gates_list: Sequence[Gates], input_shape: tuple[int, ...], warmup: int = 3, runs: int = 10
) -> list[tuple[float, float]]:
    """(median_ms, p90_ms) per entry of ``gates_list``. Runs are interleaved across entries so
    load from other processes spreads evenly instead of biasing whichever pattern ran then."""
    model.eval()
    p = next(model.parameters())
    x = torch.randn(input_shape, device=p.device, dtype=p.dtype)
    for g in gates_list:
        for _ in range(warmup):
            model(x, g)
    times: list[list[float]] = [[] for _ in gates_list]
    for _ in range(runs):
        for i, g in enumerate(gates_list):
            _sync(p.device)
            t0 = time.perf_counter()
            model(x, g)
            _sync(p.device)
            times[i].append(1e3 * (time.perf_counter() - t0))
    return [(statistics.median(t), _p90(t)) for t in times]


def _p90(values: Sequence[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


@torch.no_grad()
def measure_unit_ms(model: GatedResNet, input_shape: tuple[int, ...], warmup: int = 3, runs: int = 10) -> list[tuple[float, float]]:
    """(median_ms, p90_ms) of each unit's blocks alone, on the input they get in the super-net."""
    model.eval()
    firsts = [unit[0] for stage in model.stages for unit in stage.units]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].clone())) for i, b in enumerate(firsts)]
    p = next(model.parameters())
    try:
        model(torch.randn(input_shape, device=p.device, dtype=p.dtype), None)
    finally:
        for h in hooks:
            h.remove()
    units = [unit for stage in model.stages for unit in stage.units]
    times: list[list[float]] = [[] for _ in units]
    for r in range(warmup + runs):
        for i, unit in enumerate(units):
            h = inputs[i]
            _sync(p.device)
            t0 = time.perf_counter()
            for block in unit:
                h = block(h)
            _sync(p.device)
            if r >= warmup:
                times[i].append(1e3 * (time.perf_counter() - t0))
    return [(statistics.median(t), _p90(t)) for t in times]


# ----------------------------------------------------------------- lookup tables

LUT_COLUMNS = ("pattern", "batch", "median_ms", "p90_ms", "runs", "device")


@dataclass(frozen=True)
class LutRow:
    pattern: str  # T/F pattern, or "unit:<i>" for one unit's blocks alone
    batch: int
    median_ms: float
    p90_ms: float
    runs: int
    device: str


def write_lut(path: str | Path, rows: Iterable[LutRow]) -> Path:
    """Write the CSV to a temporary sibling, then rename it: a failed write leaves no half table."""
    import os

    from gatesearch.preflight import atomic_target

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_target(path)
    try:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LUT_COLUMNS)
            for r in rows:
                w.writerow([r.pattern, r.batch, f"{r.median_ms:.6f}", f"{r.p90_ms:.6f}", r.runs, r.device])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _lut_row(rec: dict[str, str]) -> LutRow:
    """One CSV record as a ``LutRow``; a ValueError names the bad field (latencies finite, >= 0)."""
    pat = rec["pattern"].strip()
    if not pat.startswith("unit:"):
        pat = str(SkipPattern.parse(pat))
    else:
        int(pat[5:])
    row = LutRow(pat, int(rec["batch"]), float(rec["median_ms"]), float(rec["p90_ms"]), int(rec["runs"]),
                 rec["device"].strip())
    for name in ("median_ms", "p90_ms"):
        value = getattr(row, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite latency >= 0, got {value}")
    if row.batch < 1 or row.runs < 1:
        raise ValueError(f"batch and runs must be >= 1, got batch {row.batch}, runs {row.runs}")
    if not row.device:
        raise ValueError("empty device")
    return row


def read_lut(path: str | Path) -> list[LutRow]:
    """Parse a LUT CSV; any problem is a ``UserError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LUT file {path} does not exist")
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"LUT {path}: not a UTF-8 text file (byte {e.start}); expected the CSV of `gatesearch profile`") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in LUT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"LUT {path}: missing columns {missing}; expected {','.join(LUT_COLUMNS)}")
    for line, rec in enumerate(reader, start=2):
        try:
            rows.append(_lut_row(rec))
        except (ValueError, TypeError, AttributeError) as e:
            raise UserError(f"LUT {path} line {line}: malformed row ({e})") from None
    if not rows:
        raise UserError(f"LUT {path} has no rows")
    return rows


def lut_lookup(rows: Sequence[LutRow], n_units: int, batch: int) -> dict[str, LutRow]:
    """Pattern -> row for ``batch``; a pattern of the wrong length is a ``UserError``."""
    out = {}
    for r in rows:
        if r.pattern.startswith("unit:") or r.batch != batch:
            continue
        if len(r.pattern) != n_units:
            raise UserError(f"LUT pattern {r.pattern} has {len(r.pattern)} units; this model has {n_units}")
        out[r.pattern] = r
    return out


def lut_compose(rows: Sequence[LutRow], pattern: str, batch: int) -> tuple[float, float] | None:
    """(median_ms, p90_ms) of a pattern the LUT lacks, composed additively from its base-net row and
    its ``unit:<i>`` rows (base + each kept unit); None when those rows are missing."""
    base = next((r for r in rows if r.batch == batch and r.pattern == "T" * len(pattern)), None)
    units = {int(r.pattern[5:]): r for r in rows if r.batch == batch and r.pattern.startswith("unit:")}
    kept = [u for u, c in enumerate(pattern) if c == "F"]
    if base is None or any(u not in units for u in kept):
        return None
    return (base.median_ms + sum(units[u].median_ms for u in kept), base.p90_ms + sum(units[u].p90_ms for u in kept))


def profile_rows(model: GatedResNet, input_shape: tuple[int, int, int], batch: int, runs: int, warmup: int,
                 device_name: str) -> list[LutRow]:
    """LUT rows for every pattern (interleaved runs) and every unit alone (``unit:<i>``) at ``batch``."""
    from gatesearch.patterns import all_patterns

    if model.n_units > 12:
        raise UserError(f"profiling every pattern of {model.n_units} units (2^{model.n_units}) is too many; max 12")
    shape = (batch, *input_shape)
    patterns = all_patterns(model.n_units)
    rows = [LutRow(str(p), batch, med, p90, runs, device_name)
            for p, (med, p90) in zip(patterns, measure_ms(model, patterns, shape, warmup, runs))]
    rows += [LutRow(f"unit:{u}", batch, med, p90, runs, device_name)
             for u, (med, p90) in enumerate(measure_unit_ms(model, shape, warmup, runs))]
    return rows
