"""Warmup + cosine schedule values, and the schedule's behaviour across a checkpoint."""

from __future__ import annotations

import math
import pickle
from functools import partial

import pytest
import torch

from pcpretrain.config import SchedulerConfig
from pcpretrain.optim import build_scheduler, reapply_schedule, warmup_cosine


def test_warmup_is_linear_and_reaches_the_peak() -> None:
    schedule = partial(warmup_cosine, warmup_steps=4, total_steps=20, end_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == 1.0


def test_cosine_decays_to_the_end_ratio_and_stays_there() -> None:
    schedule = partial(warmup_cosine, warmup_steps=2, total_steps=12, end_ratio=0.1)
    assert schedule(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(12) == pytest.approx(0.1)
    assert schedule(50) == pytest.approx(0.1)
    values = [schedule(s) for s in range(2, 13)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def scheduler_after(steps: int, total_steps: int, state: dict | None = None):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(opt, SchedulerConfig(warmup_steps=3, end_ratio=0.2), total_steps=total_steps)
    if state is not None:
        scheduler.load_state_dict(state)
        reapply_schedule(scheduler)
    for _ in range(steps):
        opt.step()
        scheduler.step()
    return scheduler


def test_resumed_scheduler_continues_exactly() -> None:
    straight = scheduler_after(8, total_steps=10)
    state = pickle.loads(pickle.dumps(scheduler_after(5, total_steps=10).state_dict()))
    resumed = scheduler_after(3, total_steps=10, state=state)
    assert resumed.get_last_lr() == straight.get_last_lr()


def test_resumed_scheduler_follows_a_lengthened_schedule_from_the_config() -> None:
    state = scheduler_after(5, total_steps=10).state_dict()
    resumed = scheduler_after(0, total_steps=100, state=state)
    expected = warmup_cosine(5, warmup_steps=3, total_steps=100, end_ratio=0.2)
    assert resumed.get_last_lr() == [pytest.approx(expected)]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
