"""Switchable (skip-aware) BatchNorm.

Adaptive Depth Networks (Kang & Lee, paper ``001_...`` Sec. 3.4) give the mandatory
blocks of a stage two BN sets that "are switched depending on whether its skippable sub-path is
skipped": the features that reach them differ in distribution depending on whether the stage's
gated unit runs after them, so each case has its own statistics and affine parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from gatesearch.parallel import shards_differ, sum_over_ranks

#: Index of the BN set used when the stage's gated unit runs / is skipped.
UNIT_ON, UNIT_OFF = 0, 1


class SwitchableBatchNorm2d(nn.Module):
    """Two BatchNorm2d sets; ``forward(x, which)`` picks one.

    ``which`` is ``UNIT_ON`` / ``UNIT_OFF`` (pattern path: one set, the other is not touched), or a
    ``[B]`` (or broadcast ``[1]``) float tensor of keep factors ``k`` (tensor path).

    Training, tensor path — each sample is routed to the set of its unit's state: with ``k`` in
    {0, 1} the ON set's batch statistics, output and running averages come only from the samples
    with ``k = 1``, the OFF set's only from those with ``k = 0``, exactly as two ``BatchNorm2d`` run
    on the two sub-batches (tested). A soft ``k`` is a fractional membership: sample ``b`` counts
    with weight ``k_b`` in the ON set's (weighted) mean and variance and ``1 - k_b`` in the OFF
    set's, and its output is ``k_b * BN_on(x_b) + (1 - k_b) * BN_off(x_b)``; the running variance
    takes the weighted variance times ``n / (n - 1)``, ``n = H * W * sum_b weight_b``.

    A set with ``n <= 1`` values per channel in the batch (no sample routed to it, or one sample of
    a 1x1 map) has no usable batch statistics: it normalises with its running statistics (as in
    eval) and its running averages and ``num_batches_tracked`` stay as they are (as a BatchNorm
    that was not called). One sample of an ``H x W > 1`` map is an ordinary batch of ``H * W``
    values per channel, as for a BatchNorm2d called on that one sample.

    Gradient w.r.t. ``k`` (the straight-through path of hard Gumbel gates):
    ``dL/dk_b = sum_{c,h,w} g_b * (BN_on(x_b) - BN_off(x_b))``, both sets' normalisation taken
    with this batch's statistics (running ones for a set without batch statistics) held fixed:
    what switching one sample would change in its own output. Gradients w.r.t. ``x`` and the
    affine parameters are the exact ones of the routed (weighted) BatchNorm.

    Eval, tensor path: ``lerp(bn_off(x), bn_on(x), k)`` with the running statistics (exact at 0/1).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList([nn.BatchNorm2d(num_features), nn.BatchNorm2d(num_features)])

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        if isinstance(which, int):
            return self.bns[which](x)
        on, off = self.bns[UNIT_ON], self.bns[UNIT_OFF]
        if not self.training:  # lerp is exact at 0 and 1: a 0/1 tensor gives the pattern path's numbers
            return torch.lerp(off(x), on(x), which.to(x.dtype).view(-1, 1, 1, 1))
        if isinstance(on, SyncBatchNorm2d) and shards_differ():
            raise ValueError("model.sync_bn: switchable BN's keep-tensor path (learned gates on a stage-gated "
                             "model) keeps per-rank statistics; use block gating, or model.sync_bn=false")
        keep = which.to(on.weight.dtype).reshape(-1).expand(x.shape[0])  # [B]
        stats = _routed_stats(x, keep, on, off)
        y = _RoutedBatchNorm.apply(x, keep, on.weight, off.weight, on.bias, off.bias, *stats[:4], on.eps)
        self._update_running_stats(*stats)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean_on: torch.Tensor, var_on: torch.Tensor, mean_off: torch.Tensor,
                              var_off: torch.Tensor, n_on: torch.Tensor, n_off: torch.Tensor) -> None:
        """What a BatchNorm2d called on each set's samples does to its buffers (none if it had < 2 values)."""
        for bn, mean, var, n in ((self.bns[UNIT_ON], mean_on, var_on, n_on), (self.bns[UNIT_OFF], mean_off, var_off, n_off)):
            used = n > 1  # 0-dim bool: no host sync, the update is masked instead of skipped
            bn.num_batches_tracked.add_(used.to(bn.num_batches_tracked.dtype))
            factor = used.to(bn.running_mean.dtype)  # 0 leaves the buffers as they are
            if bn.momentum is None:  # cumulative average: this batch weighs 1 / (batches so far)
                factor = factor / bn.num_batches_tracked.clamp_min(1).to(factor.dtype)
            else:
                factor = factor * bn.momentum
            unbiased = var * (n / (n - 1).clamp_min(1e-12))
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)


def _routed_stats(x: torch.Tensor, keep: torch.Tensor, on: nn.BatchNorm2d, off: nn.BatchNorm2d) -> tuple[torch.Tensor, ...]:
    """Each set's batch statistics over its samples (weights ``keep`` / ``1 - keep``, ``[B]``):
    ``(mean_on [C], var_on [C], mean_off, var_off, n_on, n_off)``, ``var`` biased, ``n`` the number
    of values per channel (0-dim). A set with ``n <= 1`` gets its running statistics instead.

    Per-sample moments ``[B, C]`` (two passes: mean, then centred squares) are combined with the
    parallel-variance rule (Chan et al. 1979), ``M2_set = sum_b w_b (M2_b + hw * (mean_b - mean_set)^2)``:
    as stable as BatchNorm's own two-pass variance (``torch.var_mean`` over (H, W) is ~10x slower here)."""
    with torch.no_grad():
        hw = x.shape[2] * x.shape[3]
        f32 = torch.promote_types(x.dtype, torch.float32)  # AMP: statistics in fp32
        mean_b = x.sum((2, 3), dtype=f32) / hw  # [B, C]
        var_b = (x.to(f32) - mean_b[:, :, None, None]).square_().sum((2, 3)) / hw
        out: list[torch.Tensor] = []
        ns: list[torch.Tensor] = []
        for w, bn in ((keep, on), (1 - keep, off)):
            w = w.to(mean_b.dtype)[:, None]  # [B, 1]
            total = w.sum()
            mean = (w * mean_b).sum(0) / total.clamp_min(1e-12)  # [C]
            var = (w * (var_b + (mean_b - mean) ** 2)).sum(0) / total.clamp_min(1e-12)
            n = total * hw
            used = n > 1
            out += [torch.where(used, mean, bn.running_mean.to(mean.dtype)), torch.where(used, var, bn.running_var.to(var.dtype))]
            ns.append(n)
        return (*out, *ns)


class _RoutedBatchNorm(torch.autograd.Function):
    """``y[b] = x[b] * S[b] + T[b]`` with ``S[b] = lerp(S_off, S_on, k_b)``, ``S_set = w_set * r_set``,
    ``T_set = b_set - mean_set * S_set``, ``r_set = (var_set + eps)^-1/2``; the statistics are those of
    ``_routed_stats`` (functions of ``x`` through the weights ``k`` / ``1 - k`` unless a set fell back
    to its running statistics, which are constants).

    Written out because every gradient comes from two per-(sample, channel) sums of the upstream
    gradient ``g``, ``G1 = sum_hw g`` and ``GX = sum_hw g * x``: the affine's (``dS_set = sum_b w_b GX``,
    ``dT_set = sum_b w_b G1``), the keep's (``sum_c dS_diff GX + dT_diff G1``, statistics fixed), and
    BatchNorm's own backward through each set's mean and variance, which makes ``g_x = g * S[b] +
    x * beta[b] + gamma[b]``: two walks over the activation, with ``x`` the only tensor kept.
    """

    @staticmethod
    def forward(ctx, x, keep, w_on, w_off, b_on, b_off, mean_on, var_on, mean_off, var_off, eps):  # type: ignore[override]
        r_on, r_off = torch.rsqrt(var_on + eps), torch.rsqrt(var_off + eps)
        s_on, s_off = w_on * r_on, w_off * r_off  # [C]
        t_on, t_off = b_on - mean_on * s_on, b_off - mean_off * s_off
        k = keep.view(-1, 1)  # [B, 1]
        scale, shift = torch.lerp(s_off, s_on, k), torch.lerp(t_off, t_on, k)  # [B, C]
        y = torch.addcmul(shift.to(x.dtype)[:, :, None, None], x, scale.to(x.dtype)[:, :, None, None])
        ctx.save_for_backward(x, keep, w_on, w_off, mean_on, mean_off, r_on, r_off, s_on, s_off, t_on, t_off)
        ctx.hw = x.shape[2] * x.shape[3]
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, keep, w_on, w_off, mean_on, mean_off, r_on, r_off, s_on, s_off, t_on, t_off = ctx.saved_tensors
        f32 = torch.promote_types(s_on.dtype, torch.float32)
        g1 = g.sum((2, 3), dtype=f32)  # [B, C]
        gx = (g * x).sum((2, 3), dtype=f32)
        k = keep.view(-1, 1).to(f32)  # [B, 1]
        g_x = g_keep = None
        grads = []
        beta = torch.zeros_like(g1)
        gamma = torch.zeros_like(g1)
        for wk, w, mean, r, s in ((k, w_on, mean_on, r_on, s_on), (1 - k, w_off, mean_off, r_off, s_off)):
            w, mean, r, s = (t.to(f32) for t in (w, mean, r, s))
            d_s, d_t = (wk * gx).sum(0), (wk * g1).sum(0)  # [C]: dL/dS_set, dL/dT_set
            grads += [r * (d_s - mean * d_t), d_t]  # dL/dweight, dL/dbias
            # BN's backward through this set's batch mean and variance (none for running statistics;
            # masked, not branched on, so no host sync)
            n = wk.sum() * ctx.hw
            used = (n > 1).to(f32)
            d_mean = -d_t * s / n.clamp_min(1) * used  # per value of the set, from T = b - mean * S
            d_var = -(r ** 3) * w * (d_s - mean * d_t) / n.clamp_min(1) * used  # 2 * dL/dvar / n, via S = w * r
            beta += wk * d_var
            gamma += wk * (d_mean - d_var * mean)
        if ctx.needs_input_grad[0]:
            scale = torch.lerp(s_off.to(f32), s_on.to(f32), k)
            g_x = torch.addcmul(gamma.to(x.dtype)[:, :, None, None], x, beta.to(x.dtype)[:, :, None, None])
            g_x.addcmul_(g, scale.to(g.dtype)[:, :, None, None])
        if ctx.needs_input_grad[1]:
            d_scale, d_shift = (s_on - s_off).to(f32), (t_on - t_off).to(f32)
            g_keep = (gx * d_scale + g1 * d_shift).sum(1).to(keep.dtype)
        g_w_on, g_b_on, g_w_off, g_b_off = (t.to(w_on.dtype) for t in grads)
        return g_x, g_keep, g_w_on, g_w_off, g_b_on, g_b_off, None, None, None, None, None


class PlainNorm(nn.Module):
    """A BatchNorm2d that ignores the switch, so blocks have one call signature."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        return self.bn(x)


class SwitchableLayerNorm(nn.Module):
    """Two LayerNorm sets over the last dimension; ``forward(x, which)`` picks one.

    Adaptive Depth Networks (Kang & Lee, Sec. 3.4, last paragraph; the ablation of Sec. 4.5,
    Table 4, ViT-b/32) replace switchable BN by switchable LN in the mandatory sub-paths of
    transformers: one set when the stage's skippable sub-path runs, one when it is skipped.

    ``which``: ``UNIT_ON`` / ``UNIT_OFF`` (pattern path: one set runs, the other is untouched), or a
    ``[B]`` tensor of keep factors (tensor path). LayerNorm has no batch statistics, so routing each
    sample to its own set is exact in training and evaluation alike. The tensor path is
    ``keep * ln_on(x) + (1 - keep) * ln_off(x)`` (soft factors interpolate): both sets share the
    normalisation ``xhat``, so it is computed once and the per-sample affine
    ``xhat * lerp(w_off, w_on, keep) + lerp(b_off, b_on, keep)`` applied in one ``addcmul``
    (``lerp`` returns its end points exactly, so 0/1 factors pick one set's weights exactly).
    The transformer stages pass 0/1 (whether the stage's unit runs, as ``gated_resnet.Stage``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.lns = nn.ModuleList([nn.LayerNorm(num_features, eps=eps), nn.LayerNorm(num_features, eps=eps)])

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:
        """``x [B, ..., C]`` -> same shape; ``which`` an int or ``[B]`` keep factors."""
        if isinstance(which, int):
            return self.lns[which](x)
        on, off = self.lns[UNIT_ON], self.lns[UNIT_OFF]
        xhat = torch.nn.functional.layer_norm(x, on.normalized_shape, None, None, on.eps)
        k = which.to(on.weight.dtype).view(-1, *([1] * (x.dim() - 1)))  # [B, 1, ..., 1]
        scale, shift = torch.lerp(off.weight, on.weight, k), torch.lerp(off.bias, on.bias, k)  # [B, 1, .., C]
        return torch.addcmul(shift.to(xhat.dtype), xhat, scale.to(xhat.dtype))

    def bake(self, which: int) -> PlainLayerNorm:
        """A plain LayerNorm holding a copy of set ``which`` (``export`` uses it for pruned nets)."""
        src = self.lns[which]
        fixed = PlainLayerNorm(src.normalized_shape, eps=src.eps)
        fixed.load_state_dict(src.state_dict())
        return fixed


class PlainLayerNorm(nn.LayerNorm):
    """A LayerNorm that ignores the switch (same parameters and keys as ``nn.LayerNorm``), so
    mandatory and skippable transformer blocks have one call signature."""

    def forward(self, x: torch.Tensor, which: int | torch.Tensor = UNIT_ON) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


def unit_switch(keep: torch.Tensor) -> torch.Tensor:
    """The norm-set switch of a stage from its unit's keep factors ``[B]``: ``1[keep > 0]`` in value
    (a unit that runs at all uses the "unit runs" set: a calibrated full network's keep p_s too,
    Gated Depth Sec. 4; ADN Sec. 3.4's switch is discrete), ``keep``'s own gradient (straight-through,
    as the Gumbel gates')."""
    return (keep > 0).to(keep.dtype) + (keep - keep.detach())


class SyncBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose training statistics are those of the global batch under data parallelism
    (``model.sync_bn``): each rank's per-channel sums of ``x`` and ``x^2`` and its value count, added
    over the ranks (``parallel.sum_over_ranks``, differentiable), give the mean and biased variance one
    BatchNorm2d computes on the ranks' shards put together; the running averages take those and the
    unbiased variance. The gradient is autograd's through that sum, so with DDP's averaging it is one
    process's on the global batch. Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``;
    in one process, in eval mode, or where every rank runs the same batches (``parallel.same_batches``:
    BN re-estimation) it is ``nn.BatchNorm2d``. Written here because ``torch.nn.SyncBatchNorm`` refuses
    CPU tensors (gloo). E[x^2] - E[x]^2 in float64 sums."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and shards_differ()):
            return super().forward(x)
        c = x.shape[1]
        n_local = torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device)
        xd = x.double()
        local = torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), n_local])  # [2C + 1]
        total = sum_over_ranks(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), f)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), f)
        shape = (1, c, 1, 1)
        scale = torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        y = (x - mean.to(x.dtype).view(shape)) * scale
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` in ``module`` (both sets of every switchable BN, plain ones, the stem's)
    turned into a ``SyncBatchNorm2d`` with its parameters and buffers, in place; returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.running_mean.device)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_bn(child)
    return module
