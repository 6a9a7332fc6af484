"""Learning-rate schedules as pure step -> multiplier functions, wrapped in ``LambdaLR``."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from pcpretrain.config import SchedulerConfig


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, end_ratio: float) -> float:
    """Linear warmup to the peak over ``warmup_steps``, then cosine decay to ``end_ratio`` at ``total_steps``.

    ``step`` counts optimizer steps already taken, so the first step runs at ``1 / warmup_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> LambdaLR:
    """The schedule named by ``cfg`` over ``total_steps`` optimizer steps.

    The multiplier is a ``functools.partial``, whose arguments ``LambdaLR`` does not checkpoint: a
    resumed run follows the schedule of its current config from the resumed step on.
    """
    schedule = partial(
        warmup_cosine, warmup_steps=cfg.warmup_steps, total_steps=total_steps, end_ratio=cfg.end_ratio
    )
    return LambdaLR(optimizer, schedule)


def reapply_schedule(scheduler: LambdaLR) -> None:
    """Set each group's lr from the current schedule at the restored step.

    After a resume the optimizer carries the lr of the checkpointed schedule; when the config
    changed the schedule (say, a longer ``trainer.max_steps``) the next step must already use the
    new one. With an unchanged config this writes back the very same values.
    """
    lrs = [
        base * fn(scheduler.last_epoch)
        for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
