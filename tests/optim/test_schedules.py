"""Schedule values (cosine, warmup-stable-decay, linear), and their behaviour across a checkpoint."""

from __future__ import annotations

import math
import pickle
from functools import partial

import pytest
import torch

from pcpretrain.config import SchedulerConfig
from pcpretrain.optim import build_scheduler, reapply_schedule, warmup_cosine
from pcpretrain.optim.schedules import (
    SCHEDULES,
    schedule_function,
    warmup_linear,
    warmup_stable_decay,
)


def scheduler_config(name: str = "cosine", **extra: float) -> SchedulerConfig:
    """A config for ``name``; extra keys (``decay_fraction``) are set as attributes."""
    cfg = SchedulerConfig(name=name, warmup_steps=3, end_ratio=0.2)
    for key, value in extra.items():
        setattr(cfg, key, value)
    return cfg


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


def test_wsd_warms_up_holds_the_peak_then_decays_over_the_last_fraction() -> None:
    schedule = partial(
        warmup_stable_decay, warmup_steps=4, total_steps=100, end_ratio=0.1, decay_fraction=0.2
    )
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [schedule(s) for s in (4, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]
    assert schedule(81) == pytest.approx(1.0 - 0.9 / 20)
    assert schedule(90) == pytest.approx(0.55)
    assert schedule(99) == pytest.approx(0.1 + 0.9 / 20)
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)


def test_wsd_decay_never_starts_inside_the_warmup() -> None:
    schedule = partial(warmup_stable_decay, warmup_steps=8, total_steps=10, end_ratio=0.0, decay_fraction=0.5)
    assert schedule(7) == 1.0
    assert schedule(8) == 1.0
    assert schedule(9) == pytest.approx(0.5)
    assert schedule(10) == 0.0


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_wsd_extreme_fractions_are_constant_or_linear(fraction: float) -> None:
    wsd = partial(warmup_stable_decay, warmup_steps=2, total_steps=10, end_ratio=0.1, decay_fraction=fraction)
    linear = partial(warmup_linear, warmup_steps=2, total_steps=10, end_ratio=0.1)
    if fraction == 0.0:
        assert [wsd(s) for s in range(2, 10)] == [1.0] * 8
    else:
        assert [wsd(s) for s in range(12)] == pytest.approx([linear(s) for s in range(12)])
    assert wsd(10) == pytest.approx(0.1)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_wsd_rejects_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="decay_fraction"):
        warmup_stable_decay(5, warmup_steps=2, total_steps=10, end_ratio=0.1, decay_fraction=fraction)


def test_linear_decays_straight_from_the_peak_to_the_end_ratio() -> None:
    schedule = partial(warmup_linear, warmup_steps=2, total_steps=12, end_ratio=0.1)
    assert [schedule(s) for s in range(3)] == [0.5, 1.0, 1.0]
    assert schedule(7) == pytest.approx(0.55)
    assert schedule(11) == pytest.approx(0.1 + 0.9 / 10)
    assert schedule(12) == pytest.approx(0.1)
    assert schedule(40) == pytest.approx(0.1)
    steps = [schedule(s) for s in range(2, 13)]
    assert steps[0] - steps[1] == pytest.approx(steps[-2] - steps[-1])


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_rises_then_never_increases(name: str) -> None:
    schedule = schedule_function(scheduler_config(name, decay_fraction=0.3), total_steps=50)
    values = [schedule(s) for s in range(60)]
    assert all(a < b for a, b in zip(values[:2], values[1:3], strict=True))
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False))
    assert values[2] == 1.0
    assert values[50] == pytest.approx(0.2)
    assert min(values) == pytest.approx(0.2)


def test_build_scheduler_picks_the_schedule_by_name() -> None:
    for name, fn in SCHEDULES.items():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler(opt, scheduler_config(name), total_steps=10)
        assert scheduler.lr_lambdas[0].func is fn


def test_wsd_reads_decay_fraction_from_the_config_and_defaults_to_0_2() -> None:
    assert schedule_function(scheduler_config("wsd"), 100).keywords["decay_fraction"] == 0.2
    assert schedule_function(scheduler_config("wsd", decay_fraction=0.5), 100)(60) < 1.0


def test_an_unknown_schedule_name_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="cosine, wsd, linear"):
        schedule_function(scheduler_config("step"), 10)


def test_each_param_group_peaks_at_its_own_lr() -> None:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1.0, 0.1)]
    opt = torch.optim.SGD(groups, lr=1.0)
    scheduler = build_scheduler(opt, scheduler_config("linear"), total_steps=10)
    for _ in range(5):
        opt.step()
        scheduler.step()
    multiplier = warmup_linear(5, warmup_steps=3, total_steps=10, end_ratio=0.2)
    assert scheduler.get_last_lr() == pytest.approx([multiplier, 0.1 * multiplier])


def scheduler_after(steps: int, total_steps: int, state: dict | None = None, name: str = "cosine"):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(opt, scheduler_config(name), total_steps=total_steps)
    if state is not None:
        scheduler.load_state_dict(state)
        reapply_schedule(scheduler)
    for _ in range(steps):
        opt.step()
        scheduler.step()
    return scheduler


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_resumed_scheduler_continues_exactly(name: str) -> None:
    straight = scheduler_after(9, total_steps=10, name=name)
    state = pickle.loads(pickle.dumps(scheduler_after(5, total_steps=10, name=name).state_dict()))
    resumed = scheduler_after(4, total_steps=10, state=state, name=name)
    assert resumed.get_last_lr() == straight.get_last_lr()


# wsd is checkpointed inside its decay (from step 8 of 10) so the longer schedule is back at its peak.
@pytest.mark.parametrize(("name", "saved_at"), [("cosine", 5), ("wsd", 9), ("linear", 5)])
def test_resumed_scheduler_follows_a_lengthened_schedule_from_the_config(name: str, saved_at: int) -> None:
    state = scheduler_after(saved_at, total_steps=10, name=name).state_dict()
    resumed = scheduler_after(0, total_steps=100, state=state, name=name)
    expected = schedule_function(scheduler_config(name), 100)(saved_at)
    assert expected != scheduler_after(saved_at, total_steps=10, name=name).get_last_lr()[0]
    assert resumed.get_last_lr() == [pytest.approx(expected)]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
