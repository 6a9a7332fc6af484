"""Preemption: a stop signal mid-run gives a checkpoint and exit code 75; rerunning continues exactly."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, launched_workers, read_metrics, run_cli, start_cli, wait_until

from pcpretrain.exit_codes import PREEMPTED
from pcpretrain.stop_signals import StopSignals
from pcpretrain.train.preemption import exit_preempted

STEPS = 30
OVERRIDES = [*TINY_OVERRIDES, f"trainer.max_steps={STEPS}", "data.num_workers=0"]


def test_stop_signals_record_the_first_signal_and_restore_the_previous_handlers() -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    stops = StopSignals(["SIGUSR1", "SIGUSR2"])
    stops.install()
    try:
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR1)
        assert stops.received == signal.SIGUSR2
    finally:
        stops.restore()
    assert signal.getsignal(signal.SIGUSR1) == previous


def test_exit_preempted_lets_an_outer_handler_run_then_exits_75_deaf_to_sigterm() -> None:
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    previous_term = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            exit_preempted("SIGUSR2")
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        with pytest.raises(SystemExit, match="75"):
            exit_preempted("peer rank")
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGTERM, previous_term)
    assert exited.value.code == PREEMPTED == 75
    assert calls == [signal.SIGUSR2]


def _interrupt(run_dir: Path, nproc: int, signal_rank: int) -> subprocess.CompletedProcess:
    """Start a run, send SIGUSR1 to one rank once two steps are logged, and wait for it to end."""
    process = start_cli("train", *OVERRIDES, f"run.dir={run_dir}", nproc=nproc)
    metrics = run_dir / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, process, "two steps")
    target = process.pid if nproc == 1 else launched_workers(process.pid)[signal_rank]
    subprocess.run(["kill", "-USR1", str(target)], check=True)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize(("nproc", "signal_rank"), [(1, 0), (2, 1)])
def test_signal_checkpoints_exits_75_and_rerun_resumes_exactly(
    nproc: int, signal_rank: int, tmp_path: Path
) -> None:
    run_cli("train", *OVERRIDES, f"run.dir={tmp_path / 'straight'}", nproc=nproc)
    interrupted = _interrupt(tmp_path / "resumed", nproc, signal_rank)

    stopped_at = len(read_metrics(tmp_path / "resumed"))
    assert 2 <= stopped_at < STEPS, interrupted.stdout
    checkpoint = tmp_path / "resumed" / "checkpoints" / f"step_{stopped_at:08d}"
    assert (checkpoint / "manifest.json").is_file()
    assert sorted(p.name for p in checkpoint.glob("data_state_*.pt")) == [
        f"data_state_{rank}.pt" for rank in range(nproc)
    ]
    # Rank 0 stops although only rank `signal_rank` was signalled; torchrun reports failed workers as 1.
    assert f"stopped by      {'SIGUSR1' if signal_rank == 0 else 'peer rank'}" in interrupted.stdout
    assert interrupted.returncode == (PREEMPTED if nproc == 1 else 1)

    run_cli("train", *OVERRIDES, f"run.dir={tmp_path / 'resumed'}", nproc=nproc)
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
