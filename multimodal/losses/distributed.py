"""Collectives for contrastive losses: rank discovery, all-gather and neighbour exchange that carry gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def check_rank_world(rank: int | None, world_size: int | None) -> None:
    """Raise ValueError unless world_size >= 1 and 0 <= rank < world_size (None skips a check)."""
    if world_size is not None and world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if rank is not None and (rank < 0 or (world_size is not None and rank >= world_size)):
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")


def resolve_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): the given values, else torch.distributed's when initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    check_rank_world(rank, world_size)
    if world_size > 1 and not initialised:
        raise ValueError(
            f"world_size={world_size} but torch.distributed is not initialised; "
            "call torch.distributed.init_process_group first or leave world_size=None"
        )
    return rank, world_size


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward reduce-scatters (sums) the gradient back to each slice's owner."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.contiguous())
        return torch.cat(gathered)  # (world * B, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        slices = [g.contiguous() for g in grad.chunk(dist.get_world_size())]
        mine = torch.empty_like(slices[0])  # (B, ...)
        dist.reduce_scatter(mine, slices)
        return mine


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0; backward sums each slice's gradient over ranks and
    returns it to the rank that owns the slice.

    (B, ...) -> (world * B, ...). Every rank must pass the same shape.
    """
    return _AllGather.apply(x)


def all_gather_no_grad(x: Tensor) -> list[Tensor]:
    """Every rank's ``x`` as a list of detached copies (index = rank)."""
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.detach().contiguous())
    return gathered


def _send_recv(tensors: tuple[Tensor, ...], dsts: tuple[int, ...], srcs: tuple[int, ...]) -> tuple[Tensor, ...]:
    """Send ``tensors[i]`` to rank ``dsts[i]`` and receive a tensor of the same shape from ``srcs[i]``."""
    received = tuple(torch.empty_like(t) for t in tensors)
    requests = [dist.irecv(r, src) for r, src in zip(received, srcs, strict=True)]
    requests += [dist.isend(t.contiguous(), dst) for t, dst in zip(tensors, dsts, strict=True)]
    for request in requests:
        request.wait()
    return received


class _NeighbourExchange(torch.autograd.Function):
    """Point-to-point exchange whose backward sends each received tensor's gradient back to its sender."""

    @staticmethod
    def forward(ctx, dsts: tuple[int, ...], srcs: tuple[int, ...], *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.dsts, ctx.srcs = dsts, srcs
        return _send_recv(tensors, dsts, srcs)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        # The gradient of what came from srcs[i] goes back to srcs[i]; dsts[i] returns the gradient of what it got.
        return (None, None, *_NeighbourExchange.apply(ctx.srcs, ctx.dsts, *grads))


def neighbour_exchange_with_grad(
    tensors: tuple[Tensor, ...], *, dsts: tuple[int, ...], srcs: tuple[int, ...]
) -> tuple[Tensor, ...]:
    """Send ``tensors[i]`` to ``dsts[i]``, receive a same-shaped tensor from ``srcs[i]``; differentiable.

    Every rank must call this with matching pairs (what rank a sends to b, b must expect from a), and the
    shapes on both sides must agree. Gradients of the received tensors flow back to the ranks that sent them.
    """
    if not len(tensors) == len(dsts) == len(srcs):
        raise ValueError(f"need one dst and one src per tensor, got {len(tensors)}, {len(dsts)}, {len(srcs)}")
    return _NeighbourExchange.apply(tuple(dsts), tuple(srcs), *tensors)
