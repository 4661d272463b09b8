"""Data parallelism: the collectives ``train.fit`` and the pieces below it use when a
``torch.distributed`` process group is initialised (by Ray Train's ``TorchTrainer``, ``torchrun``, or a
test's ``init_process_group``) with more than one rank. Every function is the identity (or a no-op)
in one process, so single-process numbers never change; ``docs/DESIGN_NOTES.md`` item 46 states what
each rank does and which paper section each choice preserves.

Shapes: ``B`` is the rank's shard of the global mini-batch, ``W`` the world size; the global batch is
the ``W`` shards in rank order (``data.shard_bundle``), so the single process's batch row ``i`` is row
``i - r * B`` of rank ``r = i // B``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_parallel() -> bool:
    """Whether more than one rank trains (a process group of one behaves as no group)."""
    return rank_world()[1] > 1


def is_main() -> bool:
    """Rank 0, the one that writes checkpoints (true in one process)."""
    return rank_world()[0] == 0


_same_batches = [0]  # depth of ``same_batches`` contexts


@contextmanager
def same_batches() -> Iterator[None]:
    """Context: every rank runs the same batches (BN re-estimation on the whole training split), so
    nothing that combines the ranks' shards (``models.norm.SyncBatchNorm2d``) combines them."""
    _same_batches[0] += 1
    try:
        yield
    finally:
        _same_batches[0] -= 1


def shards_differ() -> bool:
    """Whether the ranks hold different shards of one batch now: more than one rank, outside
    ``same_batches``."""
    return is_parallel() and _same_batches[0] == 0


def _comm_device(t: torch.device | None = None) -> torch.device:
    """Where a collective's tensor must live: the current CUDA device under nccl, else the CPU
    (gloo), unless the tensor already lives on ``t`` and the backend takes it there."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t if t is not None and t.type == "cpu" else torch.device("cpu")


def summed(values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over every rank (float64: integer counts up to 2**53 stay exact).
    Every rank must call it with the same number of values. Identity in one process."""
    if not is_parallel():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def summed_rows_(rows: Sequence[list]) -> None:
    """Every number in ``rows`` (lists of counts, changed in place) summed over the ranks, in one
    all-reduce; ints stay ints. Identity in one process."""
    total = iter(summed([v for row in rows for v in row]))
    for row in rows:
        for i, v in enumerate(row):
            s = next(total)
            row[i] = int(s) if isinstance(v, int) else s


def mean_over_ranks(parts: dict[str, float]) -> dict[str, float]:
    """Each logged part averaged over the ranks, every rank getting the same numbers: with equal
    shards the mean of the ranks' batch means is the global batch's mean (what one process logs)."""
    if not is_parallel():
        return parts
    keys = sorted(parts)
    w = rank_world()[1]
    return dict(zip(keys, (v / w for v in summed([parts[k] for k in keys]))))


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``t`` replaced in place by rank ``src``'s (every rank passes a tensor of the same shape and
    dtype); returns ``t``. Identity in one process."""
    if not is_parallel():
        return t
    dev = _comm_device(t.device)
    buf = t if t.device == dev else t.to(dev)
    dist.broadcast(buf, src)
    if buf is not t:
        t.copy_(buf)
    return t


@torch.no_grad()
def broadcast_state_(module: nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of ``module`` replaced by rank ``src``'s (in place), so all ranks
    evaluate and checkpoint the same model: per-rank BatchNorm running statistics (each rank saw
    its own shard) become rank ``src``'s."""
    if not is_parallel():
        return
    for t in module.state_dict().values():
        broadcast_(t, src)


def barrier() -> None:
    if is_parallel():
        dist.barrier()


class _SumOverRanks(torch.autograd.Function):
    """``y = sum_r x_r`` on every rank, with the adjoint ``dx_r = sum_q dy_q``: the gradient of the
    ranks' summed objective ``sum_q L_q(y)`` w.r.t. rank ``r``'s input (each ``L_q`` depends on ``x_r``
    through ``y``). Written here rather than ``torch.distributed.nn.functional.all_reduce``, whose
    forward and backward are the same two all-reduces, because that function is deprecated in the
    installed torch (2.14)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        g = g.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g)
        return g


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks, differentiable (``_SumOverRanks``); identity in one process."""
    return _SumOverRanks.apply(x) if is_parallel() else x


def global_batch_mean(z: torch.Tensor) -> torch.Tensor:
    """The mean over the *global* batch of ``z [B, n]``, as ``[1, n]``, differentiable: each rank's
    column sums added over the ranks, divided by the global row count. Under DDP (gradients averaged
    over ``W`` ranks) a loss of this mean that every rank computes gets exactly one process's
    gradient on the global batch: rank ``r``'s gradient is ``W`` times its rows' share (the adjoint
    sums the ``W`` identical upstream gradients) and DDP divides by ``W``. In one process ``z`` itself
    (a ``[B, n]`` batch whose mean over rows is that mean)."""
    if not is_parallel():
        return z
    rows = summed([z.shape[0]])[0]
    return sum_over_ranks(z.float().sum(0, keepdim=True)) / rows


def shard_rows(t: torch.Tensor) -> torch.Tensor:
    """Rank ``r``'s rows ``[r * B, (r + 1) * B)`` of ``t [W * B, ...]`` (drawn for the global batch);
    ``t`` in one process."""
    r, w = rank_world()
    if w == 1:
        return t
    b = t.shape[0] // w
    return t[r * b:(r + 1) * b]


def global_batch_index(local: int) -> int:
    """The index in the evaluation split's batch order of this rank's ``local``-th batch: evaluation
    loaders deal whole batches round robin (``data.shard_bundle``), so rank ``r`` holds ``r, r + W, ...``."""
    r, w = rank_world()
    return local * w + r
