"""Muon under data parallelism: each rank orthogonalises its share of the matrices, then all exchange.

Every rank still applies the cheap momentum step to every matrix, so optimizer states stay identical
everywhere (a checkpoint written by one rank is complete); only Newton–Schulz, the expensive part,
is split: matrix ``i`` of a group is orthogonalised on rank ``i % world`` and broadcast from there.
Each rank computes exactly what a single process would, so the result is bit-identical to it.
With sharded parameters (FSDP/ZeRO) the owner would first gather the full matrix; that path
belongs to the sharded engines.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from pcpretrain.optim.muon import Muon, apply_muon_update, nesterov_direction, orthogonalized_update


class DistributedMuon(Muon):
    """:class:`Muon` whose Newton–Schulz work is divided between the ranks of the default group."""

    def _muon_group_step(self, group: dict[str, Any]) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            super()._muon_group_step(group)
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        params = [p for p in group["params"] if p.grad is not None]
        updates = []
        for index, p in enumerate(params):
            direction = nesterov_direction(p.grad, self._momentum_buffer(p), group)
            owner = index % world
            updates.append(
                orthogonalized_update(direction, group) if owner == rank else torch.empty_like(direction)
            )
        handles = [
            dist.broadcast(update, src=index % world, async_op=True) for index, update in enumerate(updates)
        ]
        for handle in handles:
            handle.wait()
        for p, update in zip(params, updates, strict=True):
            apply_muon_update(p, update, group)
