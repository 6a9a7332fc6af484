"""Validation loss on a fixed held-out set at an interval and at the schedule's end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.loss import causal_lm_loss

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class Evaluation(Callback):
    """Adds ``val_loss`` (token-mean cross-entropy over the same batches every time)."""

    def __init__(self, batches: Sequence[torch.Tensor], every: int) -> None:
        self.batches = list(batches)
        self.every = every
        self.last_val_loss: float | None = None

    def due(self, trainer: Trainer) -> bool:
        step = trainer.state.step
        return bool(self.batches) and (
            (self.every > 0 and step % self.every == 0) or trainer.schedule_finished
        )

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.due(trainer):
            self.last_val_loss = evaluate(trainer, self.batches)
            metrics["val_loss"] = self.last_val_loss


@torch.no_grad()
def evaluate(trainer: Trainer, batches: Sequence[torch.Tensor]) -> float:
    """Mean loss over ``batches``; every window has the same length, so this is the token mean."""
    model, accelerator = trainer.model, trainer.accelerator
    model.eval()
    total = torch.zeros((), device=accelerator.device)
    for windows in batches:
        with accelerator.autocast():
            total += causal_lm_loss(model, windows.to(accelerator.device))
    model.train()
    return accelerator.reduce(total, reduction="mean").item() / len(batches)
