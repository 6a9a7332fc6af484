"""Warmup + cosine schedule values and their round trip through a checkpoint."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from pcpretrain.config import SchedulerConfig
from pcpretrain.optim import WarmupCosine, build_scheduler


def test_warmup_is_linear_and_reaches_the_peak() -> None:
    schedule = WarmupCosine(warmup_steps=4, total_steps=20, end_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == 1.0


def test_cosine_decays_to_the_end_ratio_and_stays_there() -> None:
    schedule = WarmupCosine(warmup_steps=2, total_steps=12, end_ratio=0.1)
    assert schedule(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(12) == pytest.approx(0.1)
    assert schedule(50) == pytest.approx(0.1)
    values = [schedule(s) for s in range(2, 13)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_scheduler_state_round_trips() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(opt, SchedulerConfig(warmup_steps=3, end_ratio=0.2), total_steps=10)
    for _ in range(5):
        opt.step()
        scheduler.step()
    state = pickle.loads(pickle.dumps(scheduler.state_dict()))
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler2 = build_scheduler(opt2, SchedulerConfig(warmup_steps=3, end_ratio=0.2), total_steps=10)
    scheduler2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    for _ in range(3):
        scheduler.step()
        scheduler2.step()
        assert scheduler.get_last_lr() == scheduler2.get_last_lr()
