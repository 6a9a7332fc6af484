"""Learning-rate schedules as pure step -> multiplier functions, wrapped in ``LambdaLR``.

Every function takes ``step``, the number of optimizer steps already taken, and returns the factor
applied to a parameter group's peak lr. ``SCHEDULES`` maps ``scheduler.name`` to its function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from pcpretrain.compat import set_last_lr
from pcpretrain.config import SchedulerConfig

DEFAULT_DECAY_FRACTION = 0.2


def _warmup(step: int, warmup_steps: int) -> float:
    """Linear ramp whose first step already trains, at ``1 / warmup_steps``."""
    return (step + 1) / warmup_steps


def _linear_decay(step: float, start: float, end: float, end_ratio: float) -> float:
    """1.0 up to ``start``, straight down to ``end_ratio`` at ``end``, flat after it."""
    if step < start:
        return 1.0
    if step >= end:
        return end_ratio
    return 1.0 - (1.0 - end_ratio) * (step - start) / (end - start)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, end_ratio: float) -> float:
    """Linear warmup to the peak over ``warmup_steps``, then cosine decay to ``end_ratio`` at ``total_steps``.

    ``step`` counts optimizer steps already taken, so the first step runs at ``1 / warmup_steps``.
    """
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_stable_decay(
    step: int, *, warmup_steps: int, total_steps: int, end_ratio: float, decay_fraction: float
) -> float:
    """Warmup, a constant peak, then a linear decay to ``end_ratio`` over the last ``decay_fraction``.

    The long constant phase lets one run be branched into decays of several lengths; the decay
    starts at ``total_steps * (1 - decay_fraction)``, but never before the warmup has ended.
    """
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"decay_fraction={decay_fraction} must lie in [0, 1]")
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    decay_start = max(float(warmup_steps), total_steps - decay_fraction * total_steps)
    return _linear_decay(step, decay_start, total_steps, end_ratio)


def warmup_linear(step: int, *, warmup_steps: int, total_steps: int, end_ratio: float) -> float:
    """Linear warmup, then a straight line from the peak to ``end_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    return _linear_decay(step, warmup_steps, total_steps, end_ratio)


SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": warmup_cosine,
    "wsd": warmup_stable_decay,
    "linear": warmup_linear,
}


def schedule_function(cfg: SchedulerConfig, total_steps: int) -> Callable[[int], float]:
    """The step -> multiplier function ``cfg`` names, bound to ``total_steps``.

    A ``functools.partial`` on purpose: ``LambdaLR`` checkpoints only a callable's ``__dict__``,
    which a partial's bound arguments are not part of, so a resumed run follows its current config.
    """
    if cfg.name not in SCHEDULES:
        raise ValueError(f"scheduler.name={cfg.name!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    kwargs: dict[str, float] = {
        "warmup_steps": cfg.warmup_steps,
        "total_steps": total_steps,
        "end_ratio": cfg.end_ratio,
    }
    if cfg.name == "wsd":
        kwargs["decay_fraction"] = getattr(cfg, "decay_fraction", DEFAULT_DECAY_FRACTION)
    return partial(SCHEDULES[cfg.name], **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> LambdaLR:
    """The schedule named by ``cfg`` over ``total_steps`` optimizer steps.

    Every param group gets the same multiplier; a group's peak lr is its own lr when the
    scheduler is built, so groups with different lrs keep their ratio throughout. The multiplier's
    bound arguments are not checkpointed: a resumed run follows the schedule of its current config
    from the resumed step on (see :func:`reapply_schedule`).
    """
    return LambdaLR(optimizer, schedule_function(cfg, total_steps))


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
    set_last_lr(scheduler, lrs)
