"""Gate modules: each turns something into ``[B, 2]`` logits (index 1 = keep), and
``gumbel_gate`` turns logits into straight-through keep factors.

Straight-through Gumbel-softmax (Jang et al. 2017; Veit & Belongie 2018 for AIG): the forward
value is a hard 0/1 sample, the gradient is that of the relaxed softmax at temperature ``tau``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gumbel_gate(
    logits: torch.Tensor, tau: float, hard: bool = True, generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample keep factors from ``[B, 2]`` logits.

    Returns ``(keep [B], keep_prob [B])``: ``keep`` is 0/1 in the forward pass when ``hard`` (with
    the relaxed gradient) and ``keep_prob`` is softmax(logits)[:, 1] without noise, the quantity
    target-rate losses act on. ``noise``: the ``[B]`` uniform draws to use (data parallelism: a
    rank's share of draws made for the global batch), else drawn from ``generator``.
    """
    if tau <= 0:
        raise ValueError(f"Gumbel temperature must be > 0, got {tau}")
    # Two classes: softmax([l0 + g0, l1 + g1] / tau)[1] = sigmoid((l1 - l0 + g1 - g0) / tau), and the
    # difference of two Gumbel(0, 1) draws is Logistic(0, 1) = log u - log(1 - u) (the binary Concrete
    # of Maddison et al. 2017): the same sample as the two-class form, in a third of the ops.
    if noise is None:
        u = torch.rand(logits.shape[:-1], device=logits.device, dtype=logits.dtype, generator=generator)
    else:
        u = noise.to(device=logits.device, dtype=logits.dtype).reshape(logits.shape[:-1])
    u = u.clamp(1e-6, 1 - 1e-6)
    diff = logits[..., 1] - logits[..., 0]  # [B]
    soft = torch.sigmoid((diff + (torch.log(u) - torch.log1p(-u))) / tau)
    keep = ((soft > 0.5).to(soft.dtype) - soft).detach() + soft if hard else soft
    return keep, torch.sigmoid(diff)


class BernoulliGate(nn.Module):
    """Fixed keep probability ``p`` (no parameters): logits ``[log(1-p), log(p)]``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 < p < 1.0:
            raise ValueError(f"Bernoulli gate probability must be in (0, 1), got {p}")
        self.register_buffer("logit", torch.tensor([math.log(1 - p), math.log(p)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(x.shape[0], 2)


class LogitGate(nn.Module):
    """Data-independent learned gate: one keep logit per unit, shared by every sample."""

    def __init__(self, init_keep: float = 0.9) -> None:
        super().__init__()
        _check_init_keep(init_keep)
        self.logit = nn.Parameter(torch.tensor(math.log(init_keep / (1 - init_keep))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = self.logit.expand(x.shape[0])
        return torch.stack([torch.zeros_like(one), one], dim=1)


class AIGGate(nn.Module):
    """Data-dependent gate (AIG, Veit & Belongie 2018): global pool -> 1x1 conv -> BN -> ReLU
    -> 1x1 conv to 2 logits, on the unit's input ``[B, C, H, W]``.

    Initialised as ConvNet-AIG (``convnet_aig.py``, ``ResNet_ImageNet.__init__``): ``fc1`` He-normal
    with fan-out (``std = sqrt(2 / hidden)``), ``fc2``'s weights ``N(0, 0.001)`` so the logits hardly
    depend on the input at first, and ``fc2``'s biases set so every gate starts at keep probability
    ``init_keep`` (AIG: biases ``[0.1, 2]``, ``sigmoid(1.9) = 0.87``, "about 85%"; here
    ``[0, logit(init_keep)]``): early training sees nearly the full network.
    """

    def __init__(self, channels: int, hidden: int = 16, init_keep: float = 0.9) -> None:
        super().__init__()
        _check_init_keep(init_keep)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.bn = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, 2, 1)
        with torch.no_grad():
            nn.init.normal_(self.fc1.weight, 0.0, math.sqrt(2.0 / hidden))
            nn.init.normal_(self.fc2.weight, 0.0, 0.001)
            self.fc2.bias.copy_(torch.tensor([0.0, math.log(init_keep / (1 - init_keep))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = _global_avg_pool(x).flatten(1)  # [B, C]
        # a 1x1 conv on a 1x1 map is a matmul: F.linear on the conv's weights (same parameters,
        # a fraction of a small convolution's per-call cost, paid 2x per unit per step)
        h = F.linear(h, self.fc1.weight.flatten(1), self.fc1.bias)  # [B, hidden]
        h = F.relu(self.bn(h.view(b, -1, 1, 1))).flatten(1)
        return F.linear(h, self.fc2.weight.flatten(1), self.fc2.bias)  # [B, 2]


def _global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, 1, 1]`` mean; its gradient is handed back as a broadcast view, so the
    gate adds no full-size gradient tensor of its own to the unit input's (autograd sums into one)."""
    return _GlobalAvgPool.apply(x)


class _GlobalAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.shape = x.shape
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        b, c, h, w = ctx.shape
        return (g / (h * w)).expand(b, c, h, w)


def _check_init_keep(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"initial keep probability must be in (0, 1), got {p}")


def build_gate(kind: str, channels: int, init_keep: float = 0.9) -> nn.Module:
    """A gate head for a unit whose input has ``channels`` channels, starting at keep probability ``init_keep``."""
    if kind == "logit":
        return LogitGate(init_keep)
    if kind == "aig":
        return AIGGate(channels, init_keep=init_keep)
    raise ValueError(f"unknown gate head {kind!r}; use 'logit' or 'aig'")
