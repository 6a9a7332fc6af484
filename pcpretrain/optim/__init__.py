"""Optimizers, parameter grouping and learning-rate schedules."""

from pcpretrain.optim.builder import build_optimizer
from pcpretrain.optim.schedules import WarmupCosine, build_scheduler

__all__ = ["WarmupCosine", "build_optimizer", "build_scheduler"]
