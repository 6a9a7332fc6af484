"""Whole-tensor access to parameters that an engine keeps sharded, and buffer agreement across ranks.

The PC power iteration and its statistics need whole matrices outside forward, where FSDP2 holds a
``DTensor`` shard and ZeRO-3 a partition. Everything here is a no-op for unsharded parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor


@contextlib.contextmanager
def full_view(param: Tensor) -> Iterator[Tensor]:
    """The whole tensor behind ``param``, for reading only; a collective call under FSDP2 and ZeRO-3."""
    if isinstance(param, DTensor):
        yield full_tensor(param)
    elif hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            yield param.data
    else:
        yield param


def full_tensor(tensor: Tensor) -> Tensor:
    """All-gather a DTensor into a plain tensor (every rank gets it); plain tensors pass through."""
    return tensor.full_tensor().detach() if isinstance(tensor, DTensor) else tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_from_main(tensors: Sequence[Tensor]) -> None:
    """Make ``tensors`` equal to rank 0's on every rank, in one collective (flattened)."""
    if not tensors or not is_distributed():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.broadcast(flat, src=0)
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def local_like(param: Tensor, full: Tensor) -> Tensor:
    """``full`` laid out like ``param``: this rank's shard when ``param`` is a DTensor, else ``full``."""
    if isinstance(param, DTensor):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    return full
