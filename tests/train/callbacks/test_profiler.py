"""trainer.profile: a trace and a top-ops table of the chosen steps only, and clear config messages."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY_OVERRIDES, compose_config, run_cli

from pcpretrain.config import ConfigError
from pcpretrain.config_validation import parse_step_range, validate
from pcpretrain.train.callbacks.profiler import Profiler


def fake_trainer(rank: int = 0, step: int = 0) -> SimpleNamespace:
    """What the callback reads of a trainer: the step counter, the rank and the device."""
    accelerator = SimpleNamespace(process_index=rank, device=torch.device("cpu"))
    return SimpleNamespace(state=SimpleNamespace(step=step), accelerator=accelerator)


def drive(profiler: Profiler, trainer: SimpleNamespace, steps: int) -> list[bool]:
    """Run ``steps`` steps of matmuls through the hooks; whether the profiler was on in each step."""
    profiling = []
    profiler.on_train_start(trainer)
    for _ in range(steps):
        profiler.on_step_start(trainer)
        x = torch.randn(32, 32, requires_grad=True)
        (x @ x).relu().sum().backward()
        profiling.append(torch._C._autograd._profiler_enabled())
        trainer.state.step += 1
        profiler.on_step_end(trainer, {})
    profiler.on_train_end(trainer)
    return profiling


def test_only_the_chosen_steps_are_traced_and_written(tmp_path: Path) -> None:
    profiler = Profiler((2, 3), [0], tmp_path / "profile")
    assert drive(profiler, fake_trainer(), 4) == [False, True, True, False]
    trace = tmp_path / "profile" / "trace_rank0_steps2-3.json"
    table = tmp_path / "profile" / "top_ops_rank0_steps2-3.txt"
    assert profiler.files == [trace, table]
    names = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {"aten::mm", "optimizer step 2", "optimizer step 3"} <= names
    assert "aten::mm" in table.read_text()


def test_an_early_end_writes_the_steps_profiled_so_far(tmp_path: Path) -> None:
    profiler = Profiler((2, 5), [0], tmp_path)
    drive(profiler, fake_trainer(), 3)
    assert [p.name for p in profiler.files] == ["trace_rank0_steps2-3.json", "top_ops_rank0_steps2-3.txt"]


def test_an_error_mid_range_writes_the_trace_up_to_the_failing_step(tmp_path: Path) -> None:
    profiler, trainer = Profiler((1, 5), [0], tmp_path), fake_trainer()
    profiler.on_train_start(trainer)
    profiler.on_step_start(trainer)
    torch.ones(4).sum()
    profiler.on_error(trainer, RuntimeError("out of memory"))
    assert not torch._C._autograd._profiler_enabled()
    assert (tmp_path / "trace_rank0_steps1-1.json").is_file()


def test_other_ranks_and_a_resume_past_the_range_profile_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert drive(Profiler((1, 2), [0], tmp_path), fake_trainer(rank=1), 2) == [False, False]
    with caplog.at_level(logging.WARNING):
        assert drive(Profiler((1, 2), [0], tmp_path), fake_trainer(step=4), 2) == [False, False]
    assert "trainer.profile=1-2: this run starts after step 4, so nothing is profiled" in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_resume_inside_the_range_profiles_the_rest(tmp_path: Path) -> None:
    profiler = Profiler((2, 4), [0], tmp_path)
    assert drive(profiler, fake_trainer(step=2), 3) == [True, True, False]
    assert profiler.files[0].name == "trace_rank0_steps3-4.json"


@pytest.mark.parametrize(("text", "steps"), [("5-7", (5, 7)), ("3", (3, 3)), (" 2 - 2 ", (2, 2))])
def test_step_ranges_parse(text: str, steps: tuple[int, int]) -> None:
    assert parse_step_range(text) == steps


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.profile=7-5"], r"trainer.profile='7-5' is not allowed; give optimizer steps as 'A-B'"),
        (["trainer.profile=0-2"], r"trainer.profile='0-2' is not allowed; .*1 <= A <= B"),
        (["trainer.profile=steps5"], r"trainer.profile='steps5' is not allowed"),
        (["trainer.profile=99-101"], r"trainer.profile='99-101' ends after trainer.max_steps=100"),
        (
            ["trainer.profile=2-3", "trainer.profile_ranks=[1]"],
            r"trainer.profile_ranks=\[1\] is not allowed; give one or more process ranks in \[0, 0\]",
        ),
        (["trainer.profile=2", "trainer.profile_ranks=[]"], r"trainer.profile_ranks=\[\] is not allowed"),
    ],
)
def test_invalid_profile_settings_name_the_key_and_the_format(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


def test_profile_is_off_by_default_and_valid_on_other_ranks_of_a_larger_run() -> None:
    cfg = compose_config()
    assert (cfg.trainer.profile, cfg.trainer.profile_ranks) == (None, [0])
    validate(
        compose_config("trainer.profile=5", "trainer.profile_ranks=[0,3]", "trainer.batch_size=32"),
        world_size=4,
    )


@pytest.mark.slow
def test_cli_run_writes_the_trace_of_the_chosen_steps(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        *TINY_OVERRIDES,
        "pc.degree=2",
        "trainer.max_steps=3",
        "trainer.profile=2-3",
        f"run.dir={tmp_path}",
    )
    trace = tmp_path / "profile" / "trace_rank0_steps2-3.json"
    assert json.loads(trace.read_text())["traceEvents"]
    table = (tmp_path / "profile" / "top_ops_rank0_steps2-3.txt").read_text()
    assert "aten::" in table
    phases = table.split("\n\n")[0].splitlines()
    assert phases[0].split()[:3] == ["phase", "host", "ms/step"]
    names = {line.rsplit(maxsplit=1)[0].strip() for line in phases[1:]}
    assert names == {"pc begin", "micro-batches", "pc finish", "clip", "optimizer", "pc spectral update"}
    assert all(float(line.split()[-1]) > 0 for line in phases[1:])
    assert "https://ui.perfetto.dev" in result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "profile").iterdir()) == [
        "top_ops_rank0_steps2-3.txt",
        "trace_rank0_steps2-3.json",
    ]
