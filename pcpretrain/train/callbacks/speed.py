"""Tokens, throughput and MFU of each step, measured around the step itself (not eval or saving)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pcpretrain.train.callbacks.base import Callback

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer


class SpeedMonitor(Callback):
    """Adds ``tokens``, ``tokens_per_s`` and, where the accelerator's peak is known, ``mfu``.

    Must come first in the callback list so evaluation and checkpoint time are not counted.
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops_total: float | None) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops_total = peak_flops_total
        self._started = 0.0
        self.step_seconds: list[float] = []

    def on_step_start(self, trainer: Trainer) -> None:
        self._started = time.perf_counter()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        seconds = max(time.perf_counter() - self._started, 1e-9)
        self.step_seconds.append(seconds)
        tokens_per_s = self.tokens_per_step / seconds
        metrics["tokens"] = trainer.state.tokens
        metrics["tokens_per_s"] = tokens_per_s
        metrics["step_time_s"] = seconds
        if self.peak_flops_total:
            metrics["mfu"] = tokens_per_s * self.flops_per_token / self.peak_flops_total

    @property
    def mean_tokens_per_s(self) -> float:
        """Throughput over this process's steps, skipping the first (warm-up) when there are others."""
        timed = self.step_seconds[1:] or self.step_seconds
        return self.tokens_per_step * len(timed) / sum(timed) if timed else 0.0
