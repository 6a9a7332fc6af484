"""The callback interface the trainer loop calls; logging, evaluation and checkpoints live behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer

# Metrics computed only at intervals (evaluation, the spectral monitor): their steps are always logged.
INTERVAL_METRICS = ("val_loss", "spectral/matrices")


@dataclass(frozen=True)
class Histogram:
    """Counts over equal bins of ``[low, high]``, a metric value for trackers that draw histograms
    (wandb); ``metrics.jsonl`` leaves it out, so its records stay flat JSON scalars."""

    counts: list[int]
    low: float
    high: float


class Callback:
    """Hooks with no-op defaults; subclasses override the moments they care about.

    ``metrics`` is the step's record; callbacks earlier in the list may add entries (evaluation adds
    ``val_loss``, the speed monitor adds ``tokens_per_s``) before loggers later in the list write it.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step (fresh or resumed)."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before the step's first micro-batch."""

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        """After clipping, right before the optimizer applies the gradients: ``.grad`` holds exactly what
        it applies (``trainer.state.step`` is still the previous step). Not called under DeepSpeed,
        whose engine clips and steps inside its ``backward``."""

    def needs_step_values(self, trainer: Trainer) -> bool:
        """Whether :meth:`on_step_end` of the step just finished wants ``loss`` and ``grad_norm`` in its
        metrics. Reading them waits for the device, so callbacks ask only on the steps they log."""
        return False

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After the step counter advanced; ``trainer.state.step`` is the step just finished."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step of this process's run (the schedule's end or ``trainer.stop_at``)."""

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        """When the run is ending because of an exception; nothing may be saved here."""


def log_due(trainer: Trainer, log_every: int, step: int | None = None) -> bool:
    """Every ``log_every`` steps and the run's last step: when loggers need the step's values.

    ``step``: the step asked about, by default the one just finished; during a step, callbacks ask about
    ``trainer.state.step + 1`` (a preemption may still make it the last step once it has finished).
    """
    step = trainer.state.step if step is None else step
    return step % log_every == 0 or step >= trainer.last_step


def is_log_step(trainer: Trainer, metrics: dict[str, Any], log_every: int) -> bool:
    """Log every ``log_every`` steps, on evaluation and spectral-monitor steps and on the run's last step."""
    return log_due(trainer, log_every) or any(key in metrics for key in INTERVAL_METRICS)
