"""A rank that dies, or a non-finite loss on any rank, stops every rank and keeps the last checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, launched_workers, read_metrics, run_cli, start_cli, wait_until

from pcpretrain import checkpoint as ckpt

pytestmark = pytest.mark.slow

OVERRIDES = [*TINY_OVERRIDES, "trainer.max_steps=30", "checkpoint.every=2", "data.num_workers=0"]


def test_a_killed_rank_stops_the_job_and_the_last_checkpoint_survives(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_cli("train", *OVERRIDES, f"run.dir={run_dir}", nproc=2)
    wait_until(lambda: bool(list((run_dir / "checkpoints").glob("step_*"))), process, "a checkpoint")
    subprocess.run(["kill", "-KILL", str(launched_workers(process.pid)[1])], check=True)
    _, stderr = process.communicate(timeout=180)

    assert process.returncode != 0
    assert "rank      : 1" in stderr and "SIGKILL" in stderr
    last_good = ckpt.find_resumable(run_dir / "checkpoints")
    assert last_good is not None
    ckpt.verify_checkpoint(last_good)

    run_cli("train", *OVERRIDES, f"run.dir={run_dir}", nproc=2)
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 31))


def test_a_non_finite_loss_stops_every_rank_before_the_step(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "train",
        *OVERRIDES,
        "optimizer.lr=1e4",
        "scheduler.warmup_steps=0",
        "trainer.grad_clip=0",
        f"run.dir={run_dir}",
        nproc=2,
        expect_ok=False,
    )
    assert result.returncode != 0
    # Both ranks stop, with the same diagnosis; their stderr lines may interleave, so count occurrences.
    assert result.stderr.count("NonFiniteLossError: non-finite values") == 2, result.stderr
    assert result.stderr.count("the optimizer step was not taken") == 2, result.stderr
    assert "last good checkpoint" in result.stderr
    for checkpoint in ckpt.list_unmerged(run_dir / "checkpoints"):
        ckpt.verify_checkpoint(checkpoint)
