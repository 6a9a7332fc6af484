"""The run-directory lock: refused while its owner lives, taken over once the owner has provably ended."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from pcpretrain.run_dir import process_start_time
from pcpretrain.run_lock import LOCK_FILE, LockOwner, RunDirLock, RunDirLocked, owner_is_gone


def _write_lock(run_dir: Path, owner: LockOwner) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps(asdict(owner)))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_acquire_writes_the_owner_and_release_removes_it(tmp_path: Path) -> None:
    with RunDirLock(tmp_path / "run") as lock:
        owner = LockOwner(**json.loads(lock.path.read_text()))
        assert owner == LockOwner.this_process()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


def test_a_live_owner_refuses_a_second_lock_and_keeps_its_own(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = replace(LockOwner.this_process(), pid=holder.pid, started=process_start_time(holder.pid))
        _write_lock(tmp_path, owner)
        with pytest.raises(RunDirLocked, match=rf"in use by another run: pid {holder.pid} on"):
            RunDirLock(tmp_path).acquire()
        assert LockOwner(**json.loads((tmp_path / LOCK_FILE).read_text())) == owner
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    _write_lock(tmp_path, replace(LockOwner.this_process(), pid=_dead_pid()))
    with RunDirLock(tmp_path) as lock:
        assert LockOwner(**json.loads(lock.path.read_text())).pid == lock.me.pid


def test_a_reused_pid_does_not_keep_a_lock(tmp_path: Path) -> None:
    """The pid is alive but started long after the lock was written: another process got the pid."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, replace(LockOwner.this_process(), pid=holder.pid, started=1.0))
        me = LockOwner.this_process()
        assert owner_is_gone(LockOwner(**json.loads((tmp_path / LOCK_FILE).read_text())), me)
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_from_another_host_outside_slurm_is_refused_with_the_file_to_delete(tmp_path: Path) -> None:
    _write_lock(tmp_path, replace(LockOwner.this_process(), host="node-elsewhere", slurm_job_id=None))
    with pytest.raises(RunDirLocked, match=rf"node-elsewhere.*delete {tmp_path / LOCK_FILE}"):
        RunDirLock(tmp_path, environ={}).acquire()


def test_a_requeued_slurm_job_takes_over_its_earlier_run_on_another_node(tmp_path: Path) -> None:
    earlier = LockOwner(pid=4242, host="gpu-node-07", started=1.0, slurm_job_id="777", slurm_restart=0)
    _write_lock(tmp_path, earlier)
    requeued = {"SLURM_JOB_ID": "777", "SLURM_RESTART_COUNT": "1"}
    with RunDirLock(tmp_path, environ=requeued) as lock:
        owner = LockOwner(**json.loads(lock.path.read_text()))
        assert (owner.slurm_job_id, owner.slurm_restart) == ("777", 1)


def test_another_slurm_job_or_the_same_incarnation_elsewhere_is_refused(tmp_path: Path) -> None:
    _write_lock(tmp_path, LockOwner(pid=4242, host="gpu-node-07", started=1.0, slurm_job_id="777"))
    for environ in ({"SLURM_JOB_ID": "778"}, {"SLURM_JOB_ID": "777", "SLURM_RESTART_COUNT": "0"}):
        with pytest.raises(RunDirLocked, match="SLURM job 777"):
            RunDirLock(tmp_path, environ=environ).acquire()


def test_a_damaged_lock_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("{not json")
    with pytest.raises(RunDirLocked, match="not a lock this program wrote"):
        RunDirLock(tmp_path).acquire()
