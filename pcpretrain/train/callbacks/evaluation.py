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

    def needs_step_values(self, trainer: Trainer) -> bool:
        return self.due(trainer)  # the train loss is logged beside the validation loss

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.due(trainer):
            self.last_val_loss = evaluate(trainer, self.batches)
            metrics["val_loss"] = self.last_val_loss


@torch.no_grad()
def evaluate(trainer: Trainer, batches: Sequence[torch.Tensor]) -> float:
    """Token-mean loss over ``batches`` (windows share one length, so weighting by window count suffices),
    computed as the trainer computes its loss."""
    model, accelerator = trainer.model, trainer.accelerator
    model.eval()
    totals = torch.zeros(2, device=accelerator.device)
    for windows in batches:
        with accelerator.autocast():
            loss = causal_lm_loss(
                model, windows.to(accelerator.device), chunk_tokens=trainer.loss_chunk_tokens
            )
        totals += torch.stack(
            [loss.float() * windows.size(0), torch.tensor(float(windows.size(0)), device=loss.device)]
        )
    model.train()
    loss_sum, count = accelerator.reduce(totals, reduction="sum").tolist()
    return loss_sum / count
