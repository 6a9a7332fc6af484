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

    def pre_optim_step(self, trainer: Trainer) -> None:
        """After the step's last backward, before gradient clipping and the optimizer step."""

    def post_optim_step(self, trainer: Trainer) -> None:
        """Right after the optimizer step, before the step counter advances."""

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After the step counter advanced; ``trainer.state.step`` is the step just finished."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step of this process's run (the schedule's end or ``trainer.stop_at``)."""

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        """When the run is ending because of an exception; nothing may be saved here."""


def is_log_step(trainer: Trainer, metrics: dict[str, Any], log_every: int) -> bool:
    """Log every ``log_every`` steps, on evaluation steps and on the run's last step."""
    step = trainer.state.step
    return step % log_every == 0 or "val_loss" in metrics or trainer.at_last_step
