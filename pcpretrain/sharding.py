"""Whole-tensor access to parameters that an engine keeps sharded, and owner-computes-and-shares.

The PC transform and its power iteration need whole matrices outside forward, where FSDP2 holds a
``DTensor`` shard and ZeRO-3 a partition. Work on a stack of same-shaped matrices is split into
contiguous slices, one per rank; each rank computes its slice and the slices are then shared with
one collective per rank and stack. Everything here is a no-op for unsharded parameters and one process.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Placement, Shard


def full_tensor(tensor: Tensor) -> Tensor:
    """All-gather a DTensor into a plain tensor (every rank gets it); plain tensors pass through."""
    return tensor.full_tensor().detach() if isinstance(tensor, DTensor) else tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local_like(param: Tensor, full: Tensor) -> Tensor:
    """``full`` laid out like ``param``: this rank's shard when ``param`` is a DTensor, else ``full``."""
    if isinstance(param, DTensor):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    return full


def full_stack(params: Sequence[Tensor], start: int, end: int, dtype: torch.dtype | None = None) -> Tensor:
    """The whole tensors of ``params[start:end]``, detached, as one stack in ``dtype`` (default: theirs).

    Collective under FSDP2 and ZeRO-3 (every rank must call it with the same ``params``); a plain stack
    of the requested rows otherwise, converted to ``dtype`` by the same pass.
    """
    if isinstance(params[0], DTensor):
        whole = _gather_dtensor_stack(params)[start:end]
        return whole if dtype is None else whole.to(dtype)
    if hasattr(params[0], "ds_id"):
        with gathered(params):
            return _stack([p.data for p in params], start, end, dtype)
    return _stack([p.detach() for p in params], start, end, dtype)


def stacks_locally(param: Tensor) -> bool:
    """Whether :func:`full_stack` of tensors like ``param`` is a local copy, with no collective: what
    lets one rank decide alone to reuse a stack it already holds."""
    return not (isinstance(param, DTensor) or hasattr(param, "ds_id"))


def own_slice_stack(
    params: Sequence[Tensor], rank: int, world: int, dtype: torch.dtype | None = None
) -> Tensor:
    """:func:`full_stack` of rank ``rank``'s :func:`slice_bounds` slice of ``params`` among ``world``, in
    ``dtype`` (default: theirs); every rank calls it, each for its own slice, all with the same ``dtype``.

    Under FSDP2 (rows sharded over a 1-D mesh of all ranks, whose coordinates are the ranks) each rank
    receives only the shards of its own slice, one redistribution of the stacked shards (an
    all-to-all where the backend has one, of shards already in ``dtype``), instead of the whole stack
    :func:`full_stack` gathers.
    """
    start, end = slice_bounds(len(params), world)[rank]
    if rows_sharded(params[0], world):
        local = _stack([p.to_local().detach() for p in params], 0, len(params), dtype)
        return redistribute_stack(local, params[0], len(params), src=[Shard(1)], dst=[Shard(0)])
    return full_stack(params, start, end, dtype)


def shards_of_own_slice(mine: Tensor, like: Tensor, count: int) -> Tensor:
    """The reverse of :func:`own_slice_stack`: from each rank's slice of whole tensors (``mine``) of a
    stack of ``count`` shaped like the row-sharded ``like``, this rank's shard of every one of them."""
    return redistribute_stack(mine, like, count, src=[Shard(0)], dst=[Shard(1)])


def rows_sharded(param: Tensor, world: int) -> bool:
    """Whether ``param`` is a DTensor sharded by rows over a 1-D mesh of all ``world`` ranks."""
    return (
        isinstance(param, DTensor)
        and param.placements == (Shard(0),)
        and param.device_mesh.size() == world > 1
    )


def as_shard_of(param: DTensor, shard: Tensor) -> DTensor:
    """``shard`` (this rank's part) as a DTensor laid out like ``param``."""
    return DTensor.from_local(
        shard, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def stack_placement(placement: Placement) -> Placement:
    """Where ``placement`` of one tensor puts a stack of them: a sharded dimension moves one along."""
    if type(placement) is Shard:
        return Shard(placement.dim + 1)
    if placement.is_replicate():
        return placement
    raise NotImplementedError(f"stacks of Shard and Replicate tensors only, not {placement}")


def redistribute_stack(
    local: Tensor, like: DTensor, count: int, src: Sequence[Placement], dst: Sequence[Placement]
) -> Tensor:
    """This rank's part of a stack of ``count`` tensors shaped like ``like``, moved from ``src`` to ``dst``.

    The stack's global shape is given, not inferred, since shards and slices may be uneven.
    """
    shape = (count, *like.shape)
    stride = torch.empty(shape, device="meta").stride()
    stack = DTensor.from_local(local, like.device_mesh, src, run_check=False, shape=shape, stride=stride)
    return stack.redistribute(like.device_mesh, dst).to_local()


def gathered(params: Sequence[Tensor]) -> contextlib.AbstractContextManager:
    """ZeRO-3 partitions gathered into whole tensors inside the block (for reading, and for a backward
    whose gradients the engine then partitions itself); a no-op for any other parameters."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def _stack(tensors: Sequence[Tensor], start: int, end: int, dtype: torch.dtype | None = None) -> Tensor:
    """``tensors[start:end]`` stacked in ``dtype`` (default: theirs), converted by the stacking pass
    itself; an empty stack of the right shape when the range is empty."""
    first = tensors[0]
    dtype = dtype or first.dtype
    if end <= start:
        return first.new_empty((0, *first.shape), dtype=dtype)
    if dtype == first.dtype:
        return torch.stack(list(tensors[start:end]))
    out = torch.empty((end - start, *first.shape), dtype=dtype, device=first.device)
    return torch.stack(list(tensors[start:end]), out=out)


def _gather_dtensor_stack(params: Sequence[Tensor]) -> Tensor:
    """All-gather same-shaped DTensors sharded on dim 0 in one collective (padded to equal shards)."""
    first = params[0]
    if first.placements != (Shard(0),) or any(p.placements != first.placements for p in params):
        return torch.stack([full_tensor(p) for p in params])
    mesh = first.device_mesh
    world, rows, rest = mesh.size(), first.shape[0], tuple(first.shape[1:])
    chunk = math.ceil(rows / world)
    local = torch.zeros((len(params), chunk, *rest), dtype=first.dtype, device=first.to_local().device)
    for index, param in enumerate(params):
        shard = param.to_local().detach()
        local[index, : shard.shape[0]] = shard
    gathered = local.new_empty((world * len(params), *local.shape[1:]))
    dist.all_gather_into_tensor(gathered, local, group=mesh.get_group())
    whole = gathered.view(world, *local.shape).transpose(0, 1).reshape(len(params), world * chunk, *rest)
    return whole[:, :rows]


def slice_bounds(count: int, world: int) -> list[tuple[int, int]]:
    """Contiguous slices ``[start, end)`` of a stack of ``count``, one per rank, cut as ``torch.chunk``
    cuts: ``ceil(count / world)`` each, so the last ranks may get fewer or none (the busiest rank has
    as much as under any split)."""
    per_rank = -(-count // world)
    return [(min(rank * per_rank, count), min((rank + 1) * per_rank, count)) for rank in range(world)]


def broadcast_slices(stack: Tensor, bounds: Sequence[tuple[int, int]]) -> None:
    """Rank ``r`` holds the rows ``bounds[r]`` of ``stack``; afterwards every rank holds all of them."""
    _per_owner(stack, bounds, lambda part, rank: dist.broadcast(part, src=rank, async_op=True))


def reduce_slices(stack: Tensor, bounds: Sequence[tuple[int, int]]) -> None:
    """Sum ``stack`` over ranks, each slice ``bounds[r]`` only onto rank ``r`` (others keep partial sums)."""
    _per_owner(stack, bounds, lambda part, rank: dist.reduce(part, dst=rank, async_op=True))


def _per_owner(
    stack: Tensor, bounds: Sequence[tuple[int, int]], collective: Callable[[Tensor, int], dist.Work]
) -> None:
    """``collective(slice, owner)`` for every rank's non-empty slice, all in flight at once (nothing to
    share when one process holds every slice)."""
    if len(bounds) == 1:
        return
    handles = [collective(stack[start:end], rank) for rank, (start, end) in enumerate(bounds) if end > start]
    for handle in handles:
        handle.wait()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 without a process group)."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def host_group() -> dist.ProcessGroup | None:
    """A group of all ranks whose collectives run on the host (gloo): the default group when it is
    gloo already, else a new one. Small agreements (a stop flag) through it never wait for the device.
    Every rank must call it at the same point (creating a group is collective)."""
    if dist.get_backend() == "gloo":
        return None  # the default group
    return dist.new_group(backend="gloo")
