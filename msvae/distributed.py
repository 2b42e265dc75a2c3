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

import contextlib
from typing import Callable, Iterator

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


def process_seed(seed: int, group) -> int:
    """The seed of this rank's own randomness (sampling noise): ``seed`` on the first rank (so one
    process is unchanged), a distinct one on each other rank."""
    return seed + 1_000_003 * rank_and_size(group)[0]


@torch.no_grad()
def all_rows(rows: Tensor, group) -> Tensor:
    """``gather_rows`` without gradients: every rank's rows ``[R B, ...]`` (for state estimated
    from the global batch, e.g. ``NeighbourCentre``'s table); ``rows`` for ``group=None``."""
    return gather_rows(rows.detach(), group)


def average_gradients(parameters, group) -> list:
    """Data parallelism for any training step: at the end of every backward pass that reaches
    ``parameters``, their gradients are averaged over the ranks of ``group`` in one all-reduce
    (flattened into one buffer; before clipping or an optimiser step sees them), so every rank
    steps with the gradient of the mean of the ranks' losses — with ``gather_rows`` in the
    estimators, the gradient of the one-process loss on the global batch. Unlike
    DistributedDataParallel it needs no wrapper around ``forward`` (stage 2 trains through
    methods of several networks, a GAN through two players). Averaging is linear and what an
    earlier pass averaged is equal on every rank, so several backward passes before one step (a
    GAN's players) still give the average. Returns the hook handles (``handle.remove()`` ends it);
    nothing for ``group=None`` or one rank."""
    rank, size = rank_and_size(group)
    if size == 1:
        return []
    parameters = [p for p in parameters if p.requires_grad]
    queued = []

    def average() -> None:  # run by autograd once the backward pass is over (as DDP's reducer)
        queued.clear()
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=group)
        flat.div_(size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view(g.shape))
            offset += g.numel()

    def hook(parameter: Tensor) -> None:
        if not queued:
            queued.append(True)
            torch.autograd.Variable._execution_engine.queue_callback(average)

    return [p.register_post_accumulate_grad_hook(hook) for p in parameters]


@contextlib.contextmanager
def data_parallel(modules: list[torch.nn.Module], group) -> Iterator[Callable[[], None]]:
    """Training ``modules`` as one model over the ranks of ``group``: on entry every rank takes
    the first rank's state (``broadcast_state``) and gradients are averaged
    (``average_gradients``) until exit. Yields ``synchronize()``, which broadcasts the state
    again (``fit`` calls it after the first step). Nothing happens for ``group=None``."""
    for module in modules:
        broadcast_state(module, group)
    hooks = average_gradients([p for module in modules for p in module.parameters()], group)
    try:
        yield lambda: [broadcast_state(module, group) for module in modules]
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def broadcast_state(module: torch.nn.Module, group) -> None:
    """Copies the group's first rank's parameters and buffers into every rank's ``module`` (at
    the start of training, and after the first step, where layers initialised from the first
    batch — a flow's activation normalisation — saw each rank's own shard)."""
    rank, size = rank_and_size(group)
    if size == 1:
        return
    source = dist.get_global_rank(group, 0)
    for tensor in [*module.parameters(), *module.buffers()]:
        _collective_in_place(tensor.data, lambda t: dist.broadcast(t, source, group=group))


def _collective_in_place(tensor: Tensor, collective) -> None:
    """``collective(tensor)`` in place, through a contiguous copy where the tensor is not
    contiguous (channels-last convolution weights and their gradients)."""
    if tensor.is_contiguous():
        collective(tensor)
    else:
        flat = tensor.contiguous()
        collective(flat)
        tensor.copy_(flat)


def broadcast_object(value, group):
    """The group's first rank's ``value`` on every rank (``value`` of the others is ignored)."""
    rank, size = rank_and_size(group)
    if size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, dist.get_global_rank(group, 0), group=group)
    return box[0]


def gather_objects(value, group) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every rank of ``group``."""
    rank, size = rank_and_size(group)
    if size == 1:
        return [value]
    values = [None] * size
    dist.all_gather_object(values, value, group=group)
    return values
