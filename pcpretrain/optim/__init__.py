"""Optimizers, parameter grouping and learning-rate schedules."""

from pcpretrain.optim.builder import build_optimizer
from pcpretrain.optim.schedules import build_scheduler, reapply_schedule, warmup_cosine

__all__ = ["build_optimizer", "build_scheduler", "reapply_schedule", "warmup_cosine"]
