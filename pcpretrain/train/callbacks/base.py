"""The callback interface the trainer loop calls; logging, evaluation and checkpoints live behind it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class Callback:
    """Hooks with no-op defaults; subclasses override the moments they care about.

    ``metrics`` is the step's record; callbacks earlier in the list may add entries (evaluation adds
    ``val_loss``, the speed monitor adds ``tokens_per_s``) before loggers later in the list write it.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step (fresh or resumed)."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before the step's first micro-batch."""

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


def log_due(trainer: Trainer, log_every: int) -> bool:
    """Every ``log_every`` steps and the run's last step: when loggers need the step's values."""
    return trainer.state.step % log_every == 0 or trainer.at_last_step


def is_log_step(trainer: Trainer, metrics: dict[str, Any], log_every: int) -> bool:
    """Log every ``log_every`` steps, on evaluation steps and on the run's last step."""
    return log_due(trainer, log_every) or "val_loss" in metrics
