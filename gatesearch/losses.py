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
    return _kl_mean(teacher, student, -1)


def kl_features(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Feature KL of ADN's skip-aware self-distillation (Kang & Lee, "Adaptive Depth Networks
    with Skippable Sub-Paths", Sec. 3.3): at every spatial position the ``C`` channel activations
    are turned into a distribution by a softmax over channels, and
    ``KL(teacher || student) = sum_c p_c (log p_c - log q_c)`` is averaged over batch and positions.

    ``teacher``, ``student``: ``[B, C, H, W]`` stage outputs; the teacher is detached. Scalar.
    """
    if teacher.is_contiguous(memory_format=torch.channels_last) and not teacher.is_contiguous():
        # channels-last memory: a position's C channels are adjacent, so the softmax runs over the
        # last dim of an NHWC view (no layout copy, the fast kernel)
        return kl_logits(teacher.permute(0, 2, 3, 1), student.permute(0, 2, 3, 1))
    return _kl_mean(teacher, student, 1)


def _kl_mean(teacher: torch.Tensor, student: torch.Tensor, dim: int) -> torch.Tensor:
    """KL along ``dim`` (teacher detached, at least fp32), averaged over every other position."""
    t, s = _fp32(teacher.detach()).contiguous(), _fp32(student).contiguous()
    return _SoftmaxKL.apply(t, s, dim) / (t.numel() // t.shape[dim])


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (AMP's half-precision activations), fp64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _SoftmaxKL(torch.autograd.Function):
    """``sum KL(softmax(t) || softmax(s))`` along ``dim``, summed over everything else, for
    contiguous ``t``, ``s``. The backward is the closed form ``softmax(s) - softmax(t)`` (the
    teacher ``t`` gets none): about half the memory walks of autograd's log-softmax + ``kl_div``."""

    @staticmethod
    def forward(ctx, t, s, dim):  # type: ignore[override]
        log_p, log_q = torch.log_softmax(t, dim), torch.log_softmax(s, dim)
        p = log_p.exp()
        kl = torch.vdot(p.view(-1), log_p.sub_(log_q).view(-1))  # sum p * (log p - log q)
        ctx.save_for_backward(p, log_q)
        return kl

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        p, log_q = ctx.saved_tensors
        return None, torch.exp(log_q).sub_(p).mul_(g), None


def rate_per_gate(keep: torch.Tensor, target: float | torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """AIG's per-gate target-rate loss (Veit & Belongie 2018), as 002_...txt Sec. 2.1 / 3.1 writes it:
    ``L_G = 1/|G| sum_g (t_g - 1/|B| sum_i z_{g,i})^2``, the MEAN over gates.

    ``keep``: ``[B, n_units]`` gates ``z`` (sampled straight-through gates, or keep probabilities);
    ``target``: a float, or ``[n_units]`` per-unit targets; ``active``: ``[n_units]`` bool, the units
    in the sum (AIG's schedules leave the units whose target is 1 out: ConvNet-AIG ``train_img.py``
    sums over ``target_rates[j] < 1`` and still divides by the number of all gates). Scalar.
    """
    z = keep.float().mean(0)  # [n_units]: the batch's rate of each gate
    per_gate = (torch.as_tensor(target, dtype=z.dtype, device=z.device) - z) ** 2
    if active is not None:
        per_gate = per_gate * active.to(device=z.device, dtype=z.dtype)
    return per_gate.sum() / z.numel()


def rate_per_batch(keep: torch.Tensor, target: float) -> torch.Tensor:
    """Per-batch target-rate loss (002_...txt Sec. 3.1): ``L_B = (t - 1/(|G||B|) sum_{g,i} z_{g,i})^2``;
    only the overall rate is held, so units may specialise (some always on, some rarely).
    ``keep``: ``[B, n_units]``. Scalar."""
    return (keep.float().mean() - target) ** 2


def rate_const_quad(keep: torch.Tensor, target: float) -> torch.Tensor:
    """Constant-then-quadratic (002_...txt supplement Sec. S2.2, ``L_CQ,B``): ``0`` while the batch's
    rate ``1/(|G||B|) sum z <= t``, ``(t - rate)^2`` above; it only penalises computing too much.
    ``keep``: ``[B, n_units]``. Scalar."""
    return F.relu(keep.float().mean() - target) ** 2


RATE_LOSSES = {"per_gate": rate_per_gate, "per_batch": rate_per_batch, "const_quad": rate_const_quad}
