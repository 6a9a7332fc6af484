"""The per-step PC path: W_eff once per optimizer step, one backward through the transform.

Recomputing every PC layer's polynomial in each micro-batch forward (and differentiating it in each
backward) costs more than the model's own matmuls for the 1B shapes. Here each layer computes W_eff
before the step's first micro-batch; the micro-batches accumulate dL/dW_eff; after the last one the
accumulated gradient is summed over data-parallel ranks and pushed through the transform once.

With several ranks the transform work is split as Muon's Newton–Schulz is: layer ``i`` belongs to
rank ``i % world``, which computes its W_eff and broadcasts it, receives the summed dL/dW_eff,
back-propagates through the transform and broadcasts the resulting weight and gamma gradients. The
raw PC weights are therefore kept out of DDP's own gradient reduction (``ddp_ignored_names``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from pcpretrain import pc
from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.sharding import is_distributed

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


def ddp_ignored_names(model: nn.Module) -> list[str]:
    """Parameters that reach the loss only through W_eff: their gradients come after DDP's backward."""
    return [f"{name}.{leaf}" for name, _ in pc.pc_modules(model) for leaf in ("weight", "pc_gamma")]


def _wait(handles: list) -> None:
    for handle in handles:
        handle.wait()


class PCStepTransform(Callback):
    """Begins the per-step PC transform before the first micro-batch and finishes it after the last."""

    def on_step_start(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if not is_distributed():
            pc.begin_step(model)
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        handles, received = [], []
        for index, (_, mod) in enumerate(pc.pc_modules(model)):
            if index % world == rank:
                mod.begin_step()
                weight = mod.step_weight.detach()
            else:
                weight = torch.empty_like(mod.weight)
                received.append((mod, weight))
            handles.append(dist.broadcast(weight, src=index % world, async_op=True))
        _wait(handles)
        for mod, weight in received:
            mod.begin_step(weight)

    def pre_optim_step(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if not is_distributed():
            pc.finish_step(model)
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        modules = [mod for _, mod in pc.pc_modules(model)]
        grads = [_leaf_grad(mod) for mod in modules]
        _wait([dist.reduce(g, dst=i % world, async_op=True) for i, g in enumerate(grads)])
        handles = []
        for index, (mod, grad) in enumerate(zip(modules, grads, strict=True)):
            owner = index % world
            if owner == rank:
                mod.step_weight.grad = grad.div_(world)
                mod.finish_step()
            else:
                mod.step_weight = None
                mod.weight.grad = torch.empty_like(mod.weight)
                mod.pc_gamma.grad = torch.empty_like(mod.pc_gamma)
            handles += [dist.broadcast(p.grad, src=owner, async_op=True) for p in (mod.weight, mod.pc_gamma)]
        _wait(handles)


def _leaf_grad(mod: pc.PCLinear) -> torch.Tensor:
    """This rank's dL/dW_eff (zeros if its micro-batches never reached the layer)."""
    leaf = mod.step_weight
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
