"""The PC layers' post-optimizer-step power iteration, and their statistics in the metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pcpretrain import pc
from pcpretrain.train.callbacks.base import Callback, is_log_step
from pcpretrain.train.sharding import broadcast_from_main, full_view

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class SpectralNormUpdate(Callback):
    """Refreshes every PC layer's u, v after each optimizer step and logs gamma / sigma summaries.

    Sharded engines gather each matrix for its power iteration; afterwards rank 0's u, v are
    broadcast so every rank provably holds the same estimate, whatever the engine.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every

    def post_optim_step(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        pc.update_spectral_estimates(model, full_view)
        broadcast_from_main([buf for _, mod in pc.pc_modules(model) for buf in (mod.pc_u, mod.pc_v)])

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if is_log_step(trainer, metrics, self.log_every):
            metrics.update(pc.pc_statistics(trainer.accelerator.unwrap_model(trainer.model), full_view))
