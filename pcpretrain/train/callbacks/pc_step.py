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
from accelerate import Accelerator
from torch import nn

from pcpretrain import pc
from pcpretrain.pc_math import cuda_tf32
from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.sharding import is_distributed

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def ddp_ignored_names(model: nn.Module) -> list[str]:
    """Parameters that reach the loss only through W_eff: their gradients come after DDP's backward."""
    return [f"{name}.{leaf}" for name, _ in pc.pc_modules(model) for leaf in ("weight", "pc_gamma")]


def _wait(handles: list) -> None:
    for handle in handles:
        handle.wait()


def forward_dtype(accelerator: Accelerator) -> torch.dtype | None:
    """The dtype autocast runs the linear layers in, or None without autocast."""
    return _AUTOCAST_DTYPES.get(str(accelerator.mixed_precision))


class PCStepTransform(Callback):
    """Begins the per-step PC transform before the first micro-batch and finishes it after the last.

    ``tf32``: whether the transform's float32 matmuls may use TF32 on CUDA (``pc.tf32``).
    """

    def __init__(self, tf32: bool = True) -> None:
        self.tf32 = tf32

    def on_step_start(self, trainer: Trainer) -> None:
        with cuda_tf32(self.tf32):
            self._begin(trainer)

    def pre_optim_step(self, trainer: Trainer) -> None:
        with cuda_tf32(self.tf32):
            self._finish(trainer)

    def _begin(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        dtype = forward_dtype(trainer.accelerator)
        if not is_distributed():
            pc.begin_step(model, dtype)
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        handles, received = [], []
        for index, (_, mod) in enumerate(pc.pc_modules(model)):
            if index % world == rank:
                mod.begin_step(dtype=dtype)
                weight = mod.step_weight.detach()
            else:
                weight = torch.empty_like(mod.weight, dtype=dtype)
                received.append((mod, weight))
            handles.append(dist.broadcast(weight, src=index % world, async_op=True))
        _wait(handles)
        for mod, weight in received:
            mod.begin_step(weight)

    def _finish(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if not is_distributed():
            pc.finish_step(model)
            return
        rank, world = dist.get_rank(), dist.get_world_size()
        modules = [mod for _, mod in pc.pc_modules(model)]
        grads = [mod.take_step_grad() for mod in modules]
        _wait([dist.reduce(g, dst=i % world, async_op=True) for i, g in enumerate(grads)])
        handles = []
        for index, (mod, grad) in enumerate(zip(modules, grads, strict=True)):
            owner = index % world
            if owner == rank:
                mod.finish_step(grad.div_(world))
            else:
                mod.weight.grad = torch.empty_like(mod.weight)
                mod.pc_gamma.grad = torch.empty_like(mod.pc_gamma)
            handles += [dist.broadcast(p.grad, src=owner, async_op=True) for p in (mod.weight, mod.pc_gamma)]
        _wait(handles)
