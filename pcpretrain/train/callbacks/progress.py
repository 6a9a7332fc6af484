"""Console progress: a tqdm bar on terminals, periodic plain lines in batch logs (SLURM, CI)."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from pcpretrain.train.callbacks.base import Callback

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer

log = logging.getLogger(__name__)


class ConsoleProgress(Callback):
    """Shows step, loss, lr, tokens/s and ETA on the main process."""

    def __init__(self, line_interval_s: float = 10.0) -> None:
        self.line_interval_s = line_interval_s
        self._bar: tqdm | None = None
        self._last_line = 0.0
        self._start = 0.0
        self._first_step = 0

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.accelerator.is_main_process:
            return
        self._start = time.perf_counter()
        self._first_step = trainer.state.step
        if sys.stderr.isatty():
            self._bar = tqdm(total=trainer.last_step, initial=trainer.state.step, desc="train", unit="step")

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if not trainer.accelerator.is_main_process:
            return
        fields = {"lr": f"{metrics['lr']:.2e}"}
        if "loss" in metrics:  # only on the steps whose values were read (logging, evaluation)
            fields["loss"] = f"{metrics['loss']:.4f}"
        if "tokens_per_s" in metrics:
            fields["tok/s"] = f"{metrics['tokens_per_s']:.0f}"
        if "val_loss" in metrics:
            fields["val"] = f"{metrics['val_loss']:.4f}"
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=False)
            self._bar.update(1)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.line_interval_s or trainer.at_last_step or "val_loss" in metrics:
            self._last_line = now
            text = " ".join(f"{key}={value}" for key, value in fields.items())
            log.info(
                "step %d/%d %s eta=%s", trainer.state.step, trainer.last_step, text, self._eta(trainer, now)
            )

    def _eta(self, trainer: Trainer, now: float) -> str:
        done = trainer.state.step - self._first_step
        remaining = trainer.last_step - trainer.state.step
        seconds = (now - self._start) / max(done, 1) * remaining
        return time.strftime("%H:%M:%S", time.gmtime(seconds))

    def on_train_end(self, trainer: Trainer) -> None:
        self._close()

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
