"""The per-layer latency model of a sub-network on a ``DeviceProfile`` (``latency_source: model``).

Every leaf module that runs under the pattern is captured by forward hooks (inside
``torch.utils.flop_counter`` for its FLOPs), plus one memory-only step per residual add; an attention
module (``nn.MultiheadAttention``, or a module marked ``attention_kernels``: the ViT's ``SelfAttention``,
Swin's ``WindowAttention``) is one layer holding all of its FLOPs (projections and attention matmuls,
partly functional calls no leaf hook sees), and

    t_layer = max(flops / (peak * efficiency), bytes / bandwidth) + launch_overhead

summed over layers (Williams et al., "Roofline", CACM 2009). Profiles that deploy through a fusing
runtime (TensorRT on Jetson / datacenter GPUs) fold BN, ReLU / GELU and the add into the conv or
matmul; LayerNorm is not folded (it normalises with its own input's statistics, so unlike inference BN
it is no affine map a matmul can absorb) and stays a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from gatesearch.devices.profiles import DeviceProfile
from gatesearch.flops import flop_counter
from gatesearch.models import Gates


@dataclass(frozen=True)
class Layer:
    """One layer of a forward pass: ``flops`` (2 x MACs), ``elements`` moved (params + in + out, and
    for attention its q, k, v), and the ``kernels`` it launches."""

    name: str
    kind: str  # conv | linear | norm | layernorm | act | attn | pool | add | noop | other | call (container)
    flops: int
    elements: int
    kernels: int = 1


#: ``nn.MultiheadAttention``'s kernels: input projection, fused attention, output projection. Our own
#: attention modules carry their count as ``attention_kernels`` (``models/base.py``; Swin's window
#: attention runs QK^T, bias add, softmax and PV as separate ops, plus the shift and window partition
#: copies: 8).
_MHA_KERNELS = 3


def _attention_kernels(m: nn.Module) -> int:
    """Kernels ``m`` launches if it is an attention layer traced whole, else 0."""
    return _MHA_KERNELS if isinstance(m, nn.MultiheadAttention) else getattr(m, "attention_kernels", 0)


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
    if _attention_kernels(m):
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
            layers.append(Layer(names[m], kind, flops, moved, _attention_kernels(m) or 1))

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
