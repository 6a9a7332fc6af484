"""``batch_hash``: a fingerprint of each logged step's global batch, to compare the data of two runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pcpretrain.data.batches import combine_hashes
from pcpretrain.train.callbacks.base import Callback, log_due

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class BatchHash(Callback):
    """Adds ``batch_hash`` to logged steps: the same for the same global batch on any number of
    processes and loader workers (each rank hashes its windows, one all-reduce sums them)."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if not log_due(trainer, self.log_every):
            return
        local = torch.tensor(
            [trainer.train_batches.last_hash], dtype=torch.int64, device=trainer.accelerator.device
        )
        metrics["batch_hash"] = combine_hashes(int(trainer.accelerator.reduce(local, reduction="sum").item()))
