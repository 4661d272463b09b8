"""Pure loss functions: self-distillation KL terms and target-rate losses for learned gates.

KL direction: every distillation term is ``KL(teacher || student)``; the teacher is detached (the
gradient reaches only the student) except where a method asks otherwise (Gated Depth's Eq. 7).
ADN: ``001_...txt`` Sec. 3.2, Eq. 2, Algorithm 1; Hinton et al. 2015 for the temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_logits(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
              teacher_grad: bool = False) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last dim, averaged over
    the other dims (for ``[B, K]`` logits: the batch mean of the per-sample KL, PyTorch's
    ``kl_div(reduction="batchmean")``).

    ADN (``001_...txt``, Sec. 3.2, Algorithm 1 step 8, ``D_KL(y_super || y_base)``) as its official
    code computes it (``wchkang/depth`` ``train_adn.py``, ``train_one_epoch_twobackward``): logits
    divided by the temperature ``T`` (``--subpath-temp``, default 1.0), the KL scaled by ``T^2``
    (Hinton et al. 2015), and with ``top_k > 0`` only the teacher's ``top_k`` largest classes
    (``outputs_full.topk(500)``; the student's logits gathered at those classes, both softmaxes
    renormalised over the ``top_k``); ``top_k = 0``: every class.

    ``teacher``, ``student``: ``[..., K]`` logits. The teacher is detached unless ``teacher_grad``
    (Gated Depth's Eq. 7 differentiates both sides). Returns a scalar.
    """
    t = teacher if teacher_grad else teacher.detach()
    s = student
    if top_k:
        if top_k > t.shape[-1]:
            raise ValueError(f"top_k={top_k} is larger than the {t.shape[-1]} classes")
        t, idx = t.topk(top_k, dim=-1)  # [..., top_k]
        s = s.gather(-1, idx)
    return _kl_mean(_scaled(t, temperature), _scaled(s, temperature), -1) * temperature**2


def kl_features(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0,
                reduction: str = "pooled") -> torch.Tensor:
    """Feature KL of ADN's skip-aware self-distillation (``001_...txt``, Sec. 3.2, Eq. 2 and
    Algorithm 1 step 8, ``D_KL(h_super^s || h_base^s)``), as its official code computes it.

    - ``pooled`` (the official code: ``models/_utils_fpn.py`` returns each stage's output
      average-pooled to ``[B, C]``, and ``train_adn.py`` applies ``KLDivLoss(reduction="batchmean")``
      to the softmax over channels at temperature ``T``, times ``T^2``): the batch mean of
      ``KL(softmax(mean_hw t / T) || softmax(mean_hw s / T))``.
    - ``per_position``: a softmax over the ``C`` channels at every position, the per-position KLs
      summed over positions, batch mean (``batchmean`` on the unpooled ``[B, C, H, W]`` maps).

    ``teacher``, ``student``: ``[B, C, H, W]`` stage outputs; the teacher is detached. Scalar.
    """
    t, s = teacher.detach(), student
    if reduction == "pooled":  # fp32 accumulation without an fp32 copy of an AMP feature map
        dtype = torch.promote_types(t.dtype, torch.float32)
        return kl_logits(t.mean((2, 3), dtype=dtype), s.mean((2, 3), dtype=dtype), temperature)  # [B, C]
    if reduction != "per_position":
        raise ValueError(f"unknown feature-KL reduction {reduction!r}")
    t, s = _scaled(t, temperature), _scaled(s, temperature)
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        # channels-last memory: a position's C channels are adjacent, so the softmax runs over the
        # last dim of an NHWC view (no layout copy, the fast kernel)
        t, s, dim = t.permute(0, 2, 3, 1), s.permute(0, 2, 3, 1), -1
    else:
        dim = 1
    return _kl_sum(t, s, dim) / t.shape[0] * temperature**2


def _scaled(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``x / T`` in at least fp32 (no extra pass over ``x`` at ``T = 1``)."""
    x = _fp32(x)
    return x if temperature == 1.0 else x / temperature


def _kl_sum(t: torch.Tensor, s: torch.Tensor, dim: int) -> torch.Tensor:
    """KL along ``dim`` summed over every other position (at least fp32)."""
    return _SoftmaxKL.apply(_fp32(t).contiguous(), _fp32(s).contiguous(), dim)


def _kl_mean(t: torch.Tensor, s: torch.Tensor, dim: int) -> torch.Tensor:
    """KL along ``dim`` (at least fp32), averaged over every other position."""
    return _kl_sum(t, s, dim) / (t.numel() // t.shape[dim])


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (AMP's half-precision activations), fp64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _SoftmaxKL(torch.autograd.Function):
    """``sum KL(softmax(t) || softmax(s))`` along ``dim``, summed over everything else, for
    contiguous ``t``, ``s``. The backward is the closed form: ``softmax(s) - softmax(t)`` for ``s``
    (about half the memory walks of autograd's log-softmax + ``kl_div``) and, when ``t`` needs a
    gradient, ``p * (d - sum_dim p * d)`` with ``p = softmax(t)``, ``d = log p - log q``."""

    @staticmethod
    def forward(ctx, t, s, dim):  # type: ignore[override]
        log_p, log_q = torch.log_softmax(t, dim), torch.log_softmax(s, dim)
        p = log_p.exp()
        diff = log_p.sub_(log_q)  # log p - log q, in place of log p
        kl = torch.vdot(p.view(-1), diff.view(-1))  # sum p * (log p - log q)
        ctx.dim = dim
        ctx.save_for_backward(p, log_q, diff if ctx.needs_input_grad[0] else None)
        return kl

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        p, log_q, diff = ctx.saved_tensors
        g_s = torch.exp(log_q).sub_(p).mul_(g) if ctx.needs_input_grad[1] else None
        g_t = None
        if ctx.needs_input_grad[0]:
            g_t = (diff - (p * diff).sum(ctx.dim, keepdim=True)).mul_(p).mul_(g)
        return g_t, g_s, None


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
