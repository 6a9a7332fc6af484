"""The per-step PC path: W_eff once per optimizer step, one backward through the transform.

Recomputing every PC layer's polynomial in each micro-batch forward (and differentiating it in each
backward) costs more than the model's own matmuls for the 1B shapes. Here each layer computes W_eff
before the step's first micro-batch; the micro-batches accumulate dL/dW_eff; after the last one the
accumulated gradient is averaged over data-parallel ranks and pushed through the transform once.
The raw PC weights are therefore kept out of DDP's gradient reduction (see ``ddp_ignored_names``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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


class PCStepTransform(Callback):
    """Begins the per-step PC transform before the first micro-batch and finishes it after the last."""

    def on_step_start(self, trainer: Trainer) -> None:
        pc.begin_step(trainer.accelerator.unwrap_model(trainer.model))

    def pre_optim_step(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if is_distributed():
            grads = pc.step_weight_grads(model)
            for handle in [dist.all_reduce(grad, async_op=True) for grad in grads]:
                handle.wait()
            for grad in grads:
                grad.div_(dist.get_world_size())
        pc.finish_step(model)
