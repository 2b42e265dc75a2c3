"""The global batch under ``torch.distributed``: the rows of every rank, with gradients.

The minibatch estimators (beta-TCVAE's MWS/MSS, DIP-VAE's covariance, the decomposition
divergence) are functions of the whole batch. Under data parallelism each rank holds a shard;
``gather_rows`` concatenates the shards of a process group in rank order, and its backward sends
every rank the sum over ranks of the gradient with respect to its own rows — so a rank's loss is
a function of the global batch, and DistributedDataParallel's gradient average gives exactly the
gradient of the one-process loss on the global batch (tests/test_distributed.py).

``group=None`` everywhere means "this process's batch only" (no communication), whether or not a
process group exists: the global estimator is asked for by passing a group (e.g.
``torch.distributed.group.WORLD``).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_size(group) -> tuple[int, int]:
    """``(rank, size)`` of this process in ``group``; ``(0, 1)`` for ``group=None``."""
    if group is None:
        return 0, 1
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("a process_group was given but torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first, e.g. under torchrun)")
    return dist.get_rank(group), dist.get_world_size(group)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, group) -> Tensor:
        ctx.group = group
        rows = rows.contiguous()
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, rows, group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # every rank's loss used every rank's rows: sum the gradients over ranks, keep our slice
        # (an all-reduce: gloo has no reduce-scatter, and it sidesteps torch issue #120386)
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        rank, size = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        return grad.chunk(size)[rank], None


def gather_rows(rows: Tensor, group) -> Tensor:
    """The rows ``[B, ...]`` of every rank of ``group``, concatenated in rank order ``[R B, ...]``,
    differentiable (see the module docstring); ``rows`` itself for ``group=None``. Every rank must
    hold the same number of rows (a ``ValueError`` otherwise)."""
    rank, size = rank_and_size(group)
    if size == 1:
        return rows
    counts = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor(rows.shape[0], device=rows.device), group=group)
    counts = [int(c) for c in counts]
    if len(set(counts)) != 1:
        raise ValueError(f"every rank must hold the same number of rows, got {counts}")
    return _GatherRows.apply(rows, group)
