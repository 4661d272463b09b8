"""Tolerances for comparing two float32 computations of the same deep function.

Two implementations of one network (fused vs. separate ops, one graph vs. two backwards, another
kernel or thread split on another machine) round differently. Each layer adds an error of a few
float32 epsilons relative to the largest value it carries, and every output element inherits the
error of the activations it was computed from, whatever its own size: a logit near 0 of a network
whose logits reach 3,000 is off by ~eps32 * 3,000, not by ~eps32 * |logit|. A per-element ``rtol``
therefore fails on the small elements (issue 23: 1.5e-4 on a logit of 12, rtol 1e-5), and a fixed
``atol`` tuned on one machine's magnitudes fails on another's. The bound used instead is

    atol = k * eps32 * max|reference| * layers,    rtol = 0,

``layers`` the number of conv / linear layers a value passes through (the depth of the
computation) and ``k = 4`` ("a few eps32 per layer"). The differences measured where it is used
are 0.9-5.4 eps32 * max|reference| in total (1, 2, 3 and 8 threads), 16-250x below the bound; an
implementation error moves values by a fraction of max|reference|, 1e4x and more above it.
"""

from __future__ import annotations

import torch
from torch import nn

EPS32 = torch.finfo(torch.float32).eps


def layers(model: nn.Module) -> int:
    """The depth of a network for ``rounding_tol``: its conv and linear layers."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def rounding_tol(reference: torch.Tensor, depth: int, k: float = 4.0) -> dict[str, float]:
    """``atol`` / ``rtol`` keywords of ``torch.testing.assert_close`` for float32 values computed
    through ``depth`` layers in two summation orders (module docstring)."""
    return {"atol": k * EPS32 * float(reference.detach().abs().max()) * depth, "rtol": 0.0}
