"""Pure loss functions: self-distillation KL terms and target-rate losses for learned gates.

KL direction: every distillation term is ``KL(teacher || student)`` with the teacher detached,
so gradients reach only the student (Hinton et al. 2015; ADN, Kang & Lee, Eq. 3-4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_logits(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` over the last dim, mean over the other dims.

    ``teacher``, ``student``: ``[..., K]`` logits; the teacher is detached here. Returns a scalar.
    """
    log_p = F.log_softmax(teacher.detach().float(), dim=-1)
    log_q = F.log_softmax(student.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def kl_features(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Feature KL of ADN's skip-aware self-distillation (Kang & Lee, "Adaptive Depth Networks
    with Skippable Sub-Paths", Sec. 3.3): at every spatial position the ``C`` channel activations
    are turned into a distribution by a softmax over channels, and
    ``KL(teacher || student) = sum_c p_c (log p_c - log q_c)`` is averaged over batch and positions.

    ``teacher``, ``student``: ``[B, C, H, W]`` stage outputs; the teacher is detached. Scalar.
    """
    log_p = F.log_softmax(teacher.detach().float(), dim=1)  # [B, C, H, W]: a distribution per position
    log_q = F.log_softmax(student.float(), dim=1)
    positions = teacher.numel() // teacher.shape[1]
    return F.kl_div(log_q, log_p, reduction="sum", log_target=True) / positions


def rate_per_gate(keep: torch.Tensor, target: float) -> torch.Tensor:
    """AIG target-rate loss (Veit & Belongie 2018, Eq. 6): ``sum_u (mean_b keep[b, u] - t)^2``.

    ``keep``: ``[B, n_units]`` keep factors or probabilities. Each unit is held to the target.
    """
    return ((keep.float().mean(0) - target) ** 2).sum()


def rate_per_batch(keep: torch.Tensor, target: float) -> torch.Tensor:
    """Per-batch target-rate loss (Herrmann, Bowen & Zabih 2020): ``(mean_{b,u} keep - t)^2``;
    only the overall rate is held, so units may specialise (some always on, some rarely)."""
    return (keep.float().mean() - target) ** 2


def rate_const_quad(keep: torch.Tensor, target: float) -> torch.Tensor:
    """Constant-then-quadratic (Herrmann et al. 2020): ``0`` while ``mean_{b,u} keep <= t``,
    ``(mean - t)^2`` above; it only penalises computing too much."""
    return F.relu(keep.float().mean() - target) ** 2


RATE_LOSSES = {"per_gate": rate_per_gate, "per_batch": rate_per_batch, "const_quad": rate_const_quad}
