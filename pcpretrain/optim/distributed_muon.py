"""Muon under data parallelism: each rank orthogonalises a contiguous slice of every batch, then all share.

Every rank applies the cheap momentum step to its own (replicated or sharded) state; only
Newton–Schulz, the expensive part, is split. A batch of ``B`` same-shape matrices is cut into
contiguous slices in rank order, ``ceil(B / world)`` matrices each (so the last ranks may get fewer,
or none); each rank runs one batched chain on its slice, and one collective per batch gives every
rank the updates it applies:

* replicated parameters (DDP): the rank computes the Nesterov directions of its slice only, and one
  all-gather of the padded slices gives every rank the whole batch of updates;
* ``DTensor`` shards (FSDP2): the local shards of the directions are stacked, and one redistribution
  of the stack turns row shards of every matrix into whole matrices of this rank's slice; the reverse
  redistribution of the results hands each rank its own shard of every update (an all-to-all each
  way where the backend has one, an all-gather otherwise).

Updates travel in the Newton–Schulz dtype, the one they are computed in (bf16 by default: half the
traffic of float32 parameters). Each rank computes what a single process
would: on the CPU the result is bit-identical to it; on GPUs a batched GEMM over a different number
of matrices may round differently.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial
from typing import Any

import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard

from pcpretrain.compat import local_shard
from pcpretrain.optim.muon import NS_DTYPES, Muon, orthogonalize_stack
from pcpretrain.sharding import is_distributed, redistribute_stack, slice_bounds, stack_placement


def all_gather_slices(mine: Tensor, total: int) -> Tensor:
    """Every rank's :func:`slice_bounds` slice of a stack of ``total``, on every rank (one all-gather)."""
    world = dist.get_world_size()
    padded = mine.new_empty((-(-total // world), *mine.shape[1:]))
    padded[: mine.shape[0]] = mine
    gathered = mine.new_empty((world * padded.shape[0], *mine.shape[1:]))
    dist.all_gather_into_tensor(gathered, padded)
    return gathered[:total]


class DistributedMuon(Muon):
    """:class:`Muon` whose Newton–Schulz work is divided between the ranks of the default group."""

    def _batch_key(self, p: Tensor) -> Hashable:
        """Sharded matrices must also share their layout, so one redistribution serves the whole stack."""
        layout = (p.device_mesh, tuple(p.placements)) if isinstance(p, DTensor) else None
        return *super()._batch_key(p), layout

    def _local(self, tensor: Tensor) -> Tensor:
        """This rank's shard of a DTensor, the very tensor it holds.

        Not ``to_local()``: for a parameter that makes a fresh view on every call, one op per matrix.
        """
        return local_shard(tensor)

    def _direction_rows(self, params: list[Tensor]) -> tuple[int, int]:
        """Replicated matrices: this rank's slice, the only directions it orthogonalises. Shards: all."""
        if isinstance(params[0], DTensor) or not is_distributed():
            return super()._direction_rows(params)
        return slice_bounds(len(params), dist.get_world_size())[dist.get_rank()]

    def _batch_updates(self, params: list[Tensor], directions: Tensor, group: dict[str, Any]) -> Tensor:
        """The batch's updates, each rank orthogonalising its slice: whole ones, or this rank's shards."""
        if isinstance(params[0], DTensor):
            return self._sharded_updates(params[0], directions, group)
        if is_distributed():
            return self._replicated_updates(directions, group, total=len(params))
        return super()._batch_updates(params, directions, group)

    def _replicated_updates(self, mine: Tensor, group: dict[str, Any], total: int) -> Tensor:
        """Newton–Schulz of this rank's slice of directions, then one all-gather of the results."""
        if len(mine):
            ortho = orthogonalize_stack(mine, group)
        else:
            ortho = mine.new_empty(mine.shape, dtype=NS_DTYPES[group["ns_dtype"]])
        return all_gather_slices(ortho, total=total)

    def _sharded_updates(self, like: DTensor, directions: Tensor, group: dict[str, Any]) -> Tensor:
        """Shards of all directions become whole matrices of this rank's slice, and back for the updates."""
        shards = [stack_placement(placement) for placement in like.placements]
        slices = [Shard(0)] * like.device_mesh.ndim
        move = partial(redistribute_stack, like=like, count=len(directions))
        mine = move(directions, src=shards, dst=slices)
        return move(orthogonalize_stack(mine, group), src=slices, dst=shards)
