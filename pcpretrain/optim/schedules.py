"""Learning-rate schedules as pure step -> multiplier functions, wrapped in ``LambdaLR``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from pcpretrain.config import SchedulerConfig


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup to the peak over ``warmup_steps``, then cosine decay to ``end_ratio`` at ``total_steps``.

    A picklable callable (not a lambda) so the scheduler state round-trips through checkpoints.
    ``step`` counts optimizer steps already taken; the first step runs at ``1 / warmup_steps``.
    """

    warmup_steps: int
    total_steps: int
    end_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.end_ratio + (1.0 - self.end_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> LambdaLR:
    """The schedule named by ``cfg`` over ``total_steps`` optimizer steps."""
    return LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, total_steps, cfg.end_ratio))
