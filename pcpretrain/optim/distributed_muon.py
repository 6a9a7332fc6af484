"""Muon under data parallelism: each rank orthogonalises its share of the matrices, then all exchange.

Every rank applies the cheap momentum step to its own (replicated or sharded) state; only
Newton–Schulz, the expensive part, is split: matrix ``i`` of a group is orthogonalised on rank
``i % world`` and broadcast from there. Under FSDP2 the momentum and parameters are ``DTensor``
shards: the Nesterov direction is all-gathered so Newton–Schulz sees the whole matrix, and each
rank applies its own shard of the broadcast update. Matrices are processed ``world`` at a time, so
at most one whole matrix per rank is in flight. Each rank computes exactly what a single process
would, so the result is bit-identical to it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from pcpretrain.optim.muon import Muon, apply_muon_update, nesterov_direction, orthogonalized_update
from pcpretrain.train.sharding import full_tensor, is_distributed, local_like


class DistributedMuon(Muon):
    """:class:`Muon` whose Newton–Schulz work is divided between the ranks of the default group."""

    def _muon_group_step(self, group: dict[str, Any]) -> None:
        if not is_distributed():
            super()._muon_group_step(group)
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        params = [p for p in group["params"] if p.grad is not None]
        for start in range(0, len(params), world):
            chunk = params[start : start + world]
            directions = [
                full_tensor(nesterov_direction(p.grad, self._momentum_buffer(p), group)) for p in chunk
            ]
            updates = [
                orthogonalized_update(direction, group) if owner == rank else torch.empty_like(direction)
                for owner, direction in enumerate(directions)
            ]
            handles = [
                dist.broadcast(update, src=owner, async_op=True) for owner, update in enumerate(updates)
            ]
            for handle in handles:
                handle.wait()
            for p, update in zip(chunk, updates, strict=True):
                apply_muon_update(p, local_like(p, update), group)
