"""Weights & Biases logging on the main process; the run id travels in checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpretrain.config import WandbConfig
from pcpretrain.train.callbacks.base import Callback, Histogram, is_log_step, log_due

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class WandbLogger(Callback):
    """Starts (or, when resumed, continues) one wandb run per pcpretrain run and logs each record."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any], log_every: int) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.config = config
        self.log_every = log_every
        self.run: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.accelerator.is_main_process:
            return
        import wandb

        self.run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            name=self.cfg.name or self.run_dir.name,
            tags=list(self.cfg.tags),
            id=trainer.state.wandb_run_id,
            resume="allow",
            mode=self.cfg.mode,
            dir=str(self.run_dir),
            config=self.config,
        )
        trainer.state.wandb_run_id = self.run.id

    def needs_step_values(self, trainer: Trainer) -> bool:
        return log_due(trainer, self.log_every)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.run is not None and is_log_step(trainer, metrics, self.log_every):
            self.run.log(wandb_values(metrics), step=trainer.state.step)

    def on_train_end(self, trainer: Trainer) -> None:
        self._finish(0)

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        self._finish(1)

    def _finish(self, exit_code: int) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def wandb_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with each :class:`Histogram` as a ``wandb.Histogram`` (its bin edges spelled out)."""
    import numpy as np
    import wandb

    return {
        key: wandb.Histogram(
            np_histogram=(value.counts, np.linspace(value.low, value.high, len(value.counts) + 1))
        )
        if isinstance(value, Histogram)
        else value
        for key, value in metrics.items()
    }
