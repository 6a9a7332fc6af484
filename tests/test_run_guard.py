"""Runs on a shared cluster, through the CLI: one run per directory, refusals that write nothing,
every stop recoverable, one exit code per outcome (pcpretrain/run_guard.py, pcpretrain/exit_codes.py)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, cli_command, cli_env, read_metrics, run_cli, start_cli, wait_until

from pcpretrain.run_lock import LOCK_FILE, LockOwner

OVERRIDES = [*TINY_OVERRIDES, "data.num_workers=0"]
pytestmark = pytest.mark.slow


def _train(run_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command("train", *OVERRIDES, *overrides, f"run.dir={run_dir}"),
        capture_output=True,
        text=True,
        timeout=600,
        env={**cli_env(), **(env or {})},
    )


def _write_lock(run_dir: Path, owner: LockOwner) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps(asdict(owner)))


def _files_but_the_log(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "train.log"}


def test_a_second_run_in_a_used_directory_is_refused_and_the_first_goes_on(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = start_cli("train", *OVERRIDES, "trainer.max_steps=1000", f"run.dir={run_dir}")
    wait_until(lambda: (run_dir / "metrics.jsonl").exists(), first, "the first step")
    second = _train(run_dir, "trainer.max_steps=1000", "optimizer.lr=5e-4")
    first.send_signal(signal.SIGUSR1)  # the first run checkpoints and stops, as on a preemption
    stdout, stderr = first.communicate(timeout=600)

    assert second.returncode == 2, second.stderr
    assert f"{run_dir} is in use by another run: pid {first.pid}" in second.stderr
    assert first.returncode == 75, stderr
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 1000
    assert f"checkpoint      {run_dir / 'checkpoints' / f'step_{len(steps):08d}'}" in stdout
    assert "lr: 0.003" in (run_dir / "config.yaml").read_text()
    assert "in use by another run" not in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["step"] == len(steps)
    assert not (run_dir / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, LockOwner(dead.pid, socket.gethostname(), 0.0, None))
    result = _train(tmp_path, "trainer.max_steps=2")
    assert result.returncode == 0, result.stderr
    assert f"taking over {tmp_path / LOCK_FILE} from pid {dead.pid}" in result.stdout + result.stderr
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_run_on_another_node(tmp_path: Path) -> None:
    _write_lock(tmp_path, LockOwner(4321, "node-that-was-preempted", 0.0, "777", slurm_restart=0))
    refused = _train(tmp_path, "trainer.max_steps=2", env={"SLURM_JOB_ID": "778", "SLURM_RESTART_COUNT": "1"})
    assert refused.returncode == 2 and "in use by another run: pid 4321" in refused.stderr
    requeued = _train(
        tmp_path, "trainer.max_steps=2", env={"SLURM_JOB_ID": "777", "SLURM_RESTART_COUNT": "1"}
    )
    assert requeued.returncode == 0, requeued.stderr
    assert len(read_metrics(tmp_path)) == 2


def test_refused_resumes_and_bad_input_write_nothing_and_are_logged(tmp_path: Path) -> None:
    run_cli("train", *OVERRIDES, "trainer.max_steps=3", f"run.dir={tmp_path}")
    before = _files_but_the_log(tmp_path)
    missing = tmp_path.parent / "missing.jsonl"
    refusals = {
        "optimizer.name: checkpoint 'adamw', now 'muon'": ["optimizer=muon"],
        "data.seq_len: checkpoint 64, now 32": ["data.seq_len=32"],
        str(missing): ["data=files", f"data.train_files=[{missing}]", "data.validation_documents=1"],
    }
    for message, overrides in refusals.items():
        refused = _train(tmp_path, "trainer.max_steps=6", *overrides)
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr and "resumed from" not in refused.stdout + refused.stderr
        assert message in (tmp_path / "train.log").read_text()
        assert ("nothing was overwritten" in refused.stderr) == ("checkpoint" in message)
    assert _files_but_the_log(tmp_path) == before
    assert (tmp_path / "train.log").read_text().count("(exit code 2)") == len(refusals)


def test_rerun_after_a_kill_in_the_final_save_writes_the_merged_model_and_prunes(tmp_path: Path) -> None:
    overrides = ["trainer.max_steps=4", "checkpoint.every=1", "checkpoint.keep_last=2"]
    run_cli("train", *OVERRIDES, *overrides, f"run.dir={tmp_path}")
    checkpoints = tmp_path / "checkpoints"
    merged = checkpoints / "step_00000004-merged"
    weights = (merged / "model.safetensors").read_bytes()
    # What a kill in the middle of the final save leaves: no merged form, not yet pruned.
    shutil.rmtree(merged)
    shutil.copytree(checkpoints / "step_00000003", checkpoints / "step_00000002")

    rerun = _train(tmp_path, *overrides)
    assert rerun.returncode == 0, rerun.stderr
    assert f"merged model    {merged}" in rerun.stdout
    assert (merged / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000003", "step_00000004", merged.name]


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    process = start_cli("train", *OVERRIDES, "trainer.max_steps=400", f"run.dir={tmp_path}")
    metrics = tmp_path / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, process, "two steps")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopped by      SIGINT" in stdout
    stopped_at = len(read_metrics(tmp_path))
    assert (tmp_path / "checkpoints" / f"step_{stopped_at:08d}" / "manifest.json").is_file()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_stop_signal_before_training_exits_75_without_a_traceback(tmp_path: Path) -> None:
    process = start_cli("train", *OVERRIDES, "trainer.max_steps=400", f"run.dir={tmp_path}")
    wait_until(lambda: (tmp_path / LOCK_FILE).exists(), process, "the run directory's lock")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr
    assert "received SIGTERM before training began" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("override", ["pc.degree=7", "model=no_such_model", "trainer.max_stepz=3"])
def test_bad_config_exits_2_and_leaves_no_run_directory(override: str, tmp_path: Path) -> None:
    result = _train(tmp_path / "new", override)
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "new").exists()
