"""Optimizers, parameter grouping and learning-rate schedules."""

from pcpretrain.optim.builder import build_optimizer
from pcpretrain.optim.schedules import (
    SCHEDULES,
    build_scheduler,
    reapply_schedule,
    warmup_cosine,
    warmup_linear,
    warmup_stable_decay,
)

__all__ = [
    "SCHEDULES",
    "build_optimizer",
    "build_scheduler",
    "reapply_schedule",
    "warmup_cosine",
    "warmup_linear",
    "warmup_stable_decay",
]
