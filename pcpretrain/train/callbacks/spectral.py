"""The PC layers' post-optimizer-step power iteration, and their statistics in the metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pcpretrain import pc
from pcpretrain.train.callbacks.base import Callback, is_log_step

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class SpectralNormUpdate(Callback):
    """Refreshes every PC layer's u, v after each optimizer step and logs gamma / sigma summaries."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every

    def post_optim_step(self, trainer: Trainer) -> None:
        pc.update_spectral_estimates(trainer.accelerator.unwrap_model(trainer.model))

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if is_log_step(trainer, metrics, self.log_every):
            metrics.update(pc.pc_statistics(trainer.accelerator.unwrap_model(trainer.model)))
