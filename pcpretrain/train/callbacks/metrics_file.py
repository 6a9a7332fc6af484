"""``metrics.jsonl``: one JSON object per logged step, kept consistent with the resumed checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpretrain.files import atomic_write_text
from pcpretrain.train.callbacks.base import Callback, Histogram, is_log_step, log_due

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class MetricsFile(Callback):
    """Appends logged records (scalars only: :class:`Histogram` values are for wandb); on (re)start
    drops records past the step the run continues from.

    Without the truncation a run that crashed after its last checkpoint would, once resumed,
    show the steps between that checkpoint and the crash twice.
    """

    def __init__(self, path: Path, log_every: int) -> None:
        self.path = path
        self.log_every = log_every

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.accelerator.is_main_process:
            truncate_after(self.path, trainer.state.step)

    def needs_step_values(self, trainer: Trainer) -> bool:
        return log_due(trainer, self.log_every)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.accelerator.is_main_process and is_log_step(trainer, metrics, self.log_every):
            record = {key: value for key, value in metrics.items() if not isinstance(value, Histogram)}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics file (an absent file has none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_after(path: Path, step: int) -> None:
    """Rewrite ``path`` atomically keeping only records with ``step <= step``."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))
