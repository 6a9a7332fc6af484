"""Validation loss on a fixed held-out set at an interval and at the schedule's end.

Other measurements of the same forward passes (activation statistics) join as probes instead of
running forward passes of their own; their sums travel with the loss's in one collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.loss import causal_lm_loss

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class EvaluationProbe(Protocol):
    """Something measured during evaluation's forward passes, as sums that add up over ranks."""

    def watch(self, trainer: Trainer) -> AbstractContextManager[Tensor]:
        """Observe the forward passes run inside the block (forward hooks), adding into the float64
        device tensor it yields; evaluation sums that tensor over ranks together with the loss."""

    def metrics(self, sums: list[float]) -> dict[str, float]:
        """The probe's metrics from its tensor's values (flattened) summed over all ranks."""


class Evaluation(Callback):
    """Adds ``val_loss`` (token-mean cross-entropy over the same batches every time) and the metrics
    of ``probes``."""

    def __init__(
        self, batches: Sequence[torch.Tensor], every: int, probes: Sequence[EvaluationProbe] = ()
    ) -> None:
        self.batches = list(batches)
        self.every = every
        self.probes = list(probes)
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
            results = evaluation_metrics(trainer, self.batches, self.probes)
            self.last_val_loss = results["val_loss"]
            metrics.update(results)


def evaluate(trainer: Trainer, batches: Sequence[torch.Tensor]) -> float:
    """The validation loss alone (see :func:`evaluation_metrics`)."""
    return evaluation_metrics(trainer, batches)["val_loss"]


@torch.no_grad()
def evaluation_metrics(
    trainer: Trainer, batches: Sequence[torch.Tensor], probes: Sequence[EvaluationProbe] = ()
) -> dict[str, float]:
    """``val_loss``, the token-mean loss over ``batches`` (windows share one length, so weighting by
    window count suffices) computed as the trainer computes its loss, and each probe's metrics. The
    loss's and the probes' sums are reduced over ranks in one collective and read in one transfer."""
    model, accelerator = trainer.model, trainer.accelerator
    model.eval()
    totals = torch.zeros(2, device=accelerator.device)
    with ExitStack() as watching:
        probe_sums = [watching.enter_context(probe.watch(trainer)) for probe in probes]
        for windows in batches:
            with accelerator.autocast():
                loss = causal_lm_loss(
                    model, windows.to(accelerator.device), chunk_tokens=trainer.loss_chunk_tokens
                )
            totals += torch.stack(
                [loss.float() * windows.size(0), torch.tensor(float(windows.size(0)), device=loss.device)]
            )
    model.train()
    flat = torch.cat([totals.double(), *(sums.reshape(-1) for sums in probe_sums)])
    loss_sum, count, *rest = accelerator.reduce(flat, reduction="sum").tolist()
    metrics = {"val_loss": loss_sum / count}
    for probe, sums in zip(probes, probe_sums, strict=True):
        metrics.update(probe.metrics(rest[: sums.numel()]))
        rest = rest[sums.numel() :]
    return metrics
