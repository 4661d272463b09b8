"""Device profiles: the named targets (one YAML file each, beside this module) with the figures a
latency model needs, and ``host``, whose figures are measured on this machine once per process."""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, replace
from importlib import resources
from typing import Sequence

import torch
import yaml
from torch import nn

from gatesearch.config import ConfigError
from gatesearch.errors import UserError
from gatesearch.registry import Registry


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
    folder = resources.files("gatesearch.devices")
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


def check_cost_axis(axis: str, key: str) -> None:
    """``axis`` is ``macs`` or ``latency:<device>`` with a known device profile; else a one-line
    ``ConfigError`` naming ``key`` (``train.score_cost``, ``study.cost``)."""
    if axis == "macs":
        return
    if not axis.startswith("latency:"):
        raise ConfigError(f"{key}: must be macs or latency:<device>, got {axis!r}")
    name = axis.split(":", 1)[1]
    if name not in DEVICES:
        raise ConfigError(f"{key}: unknown device {name!r}; known: {', '.join(DEVICES.names())}")
