"""Multi-process training through the CLI (2 gloo processes under torchrun) against one process.

The global batches do not depend on the number of processes (logical streams) and one process
accumulates the same global batch; so losses must agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    ADAMW_PC,
    MUON_PC,
    SPLIT_OVERRIDES,
    assert_export_matches,
    assert_resume_is_exact,
    assert_same_spectra,
    assert_same_trajectory,
    read_metrics,
    run_cli,
    split_overrides,
    train_split,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_process_adamw(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The uninterrupted 2-process AdamW run under an engine, run once per module."""
    root = tmp_path_factory.mktemp("two-process")

    def run(engine: str) -> Path:
        if not (root / engine).is_dir():
            train_split(root / engine, *ADAMW_PC, f"distributed={engine}", nproc=2)
        return root / engine

    return run


@pytest.mark.parametrize("engine", ["ddp", "zero1", "zero2", "zero3"])
def test_two_processes_match_one_process_with_accumulation_adamw_pc(
    engine: str, single_adamw: Path, two_process_adamw: Callable[[str], Path], tmp_path: Path
) -> None:
    multi = two_process_adamw(engine)
    assert_same_trajectory(read_metrics(single_adamw), read_metrics(multi))
    assert_same_spectra(single_adamw, multi)
    assert_export_matches(multi, single_adamw, tmp_path / "exported")


@pytest.mark.parametrize("engine", ["zero1", "zero2", "zero3"])
def test_a_zero_run_stopped_and_resumed_matches_the_uninterrupted_one(
    engine: str, two_process_adamw: Callable[[str], Path], tmp_path: Path
) -> None:
    overrides = split_overrides(*ADAMW_PC, f"distributed={engine}")
    assert_resume_is_exact(overrides, 2, tmp_path, nproc=2, straight=two_process_adamw(engine))


def test_two_processes_match_one_process_with_accumulation_muon_pc(single_muon: Path, tmp_path: Path) -> None:
    multi = train_split(tmp_path / "ddp", *MUON_PC, "distributed=ddp", nproc=2)
    assert_same_trajectory(read_metrics(single_muon), multi)


def test_a_sharded_engine_resumed_on_another_process_count_is_refused_clearly(tmp_path: Path) -> None:
    """ddp runs resume on any process count (tests/data/test_stream_layout_runs.py); ZeRO's partitioned
    optimizer state only on the count that saved it."""
    run_dir = tmp_path / "run"
    overrides = split_overrides(*ADAMW_PC, "distributed=zero2")
    run_cli("train", *overrides, "trainer.stop_at=2", f"run.dir={run_dir}", nproc=2)
    result = run_cli("train", *overrides, f"run.dir={run_dir}", expect_ok=False, launcher=True)
    assert result.returncode != 0  # the process exits 2; torchrun reports any failure as 1
    assert "resume it on 2 processes, not 1" in result.stderr and "step_00000002" in result.stderr
    assert (run_dir / "checkpoints" / "step_00000002" / "manifest.json").is_file()
    assert not (run_dir / "checkpoints" / "step_00000004").exists()


def test_single_engine_refuses_several_processes(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        *SPLIT_OVERRIDES,
        "distributed=single",
        f"run.dir={tmp_path / 'run'}",
        nproc=2,
        expect_ok=False,
    )
    assert result.returncode != 0
    assert "distributed=single but the launcher started 2 processes" in result.stderr


@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_a_zero_engine_runs_in_a_plain_process_like_ddp(
    engine: str, single_adamw: Path, tmp_path: Path
) -> None:
    # One process accumulates two micro-batches per step: the per-step PC gradients arrive in a backward
    # after both, which ZeRO-3 must not add onto the previous step's (it did, from step 2 on).
    plain = train_split(tmp_path / engine, *ADAMW_PC, f"distributed={engine}", nproc=1)
    assert_same_trajectory(read_metrics(single_adamw), plain)
