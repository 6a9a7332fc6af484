"""One run per run directory: a lock file naming its owner, taken over only when the owner is gone.

Two launches writing into one ``run.dir`` (a job submitted twice, a requeued job overlapping its
predecessor) would interleave their metrics and claim each other's checkpoints. The first process of
a launch therefore creates ``<run.dir>/.lock`` (pid, host, process start time, SLURM job id) with an
exclusive create; a second launch is refused while the owner lives. The owner counts as gone when:

- it ran on this host and its pid no longer exists, or exists but started at another time (reused);
- it ran in an earlier incarnation of this process's SLURM job (a requeue keeps the job id and
  raises ``SLURM_RESTART_COUNT``; a job runs one incarnation at a time, so the earlier one has
  ended, on whichever node it ran).

A lock whose owner ran on another host outside SLURM cannot be checked; the message says which file
to delete once the user knows that run has ended.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from pcpretrain.files import atomic_write_text
from pcpretrain.run_dir import process_start_time

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# Two start times of one process, read at two moments, agree to within clock-tick rounding.
_START_TOLERANCE_S = 1.0


class RunDirLocked(RuntimeError):
    """Another live run owns the run directory; nothing was written."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a run directory."""

    pid: int
    host: str
    started: float
    slurm_job_id: str | None
    slurm_restart: int = 0

    @classmethod
    def this_process(cls, environ: Mapping[str, str] = os.environ) -> LockOwner:
        pid = os.getpid()
        job = environ.get("SLURM_ARRAY_JOB_ID") or environ.get("SLURM_JOB_ID")
        if job and environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{job}_{environ['SLURM_ARRAY_TASK_ID']}"
        return cls(
            pid=pid,
            host=socket.gethostname(),
            started=process_start_time(pid),
            slurm_job_id=job,
            slurm_restart=int(environ.get("SLURM_RESTART_COUNT") or 0),
        )

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        job = f", SLURM job {self.slurm_job_id} run {self.slurm_restart}" if self.slurm_job_id else ""
        return f"pid {self.pid} on {self.host} (started {since}{job})"


def owner_is_gone(owner: LockOwner, me: LockOwner) -> bool:
    """Whether the lock's owner has provably ended (see the module docstring)."""
    same_job = owner.slurm_job_id is not None and owner.slurm_job_id == me.slurm_job_id
    if same_job and owner.slurm_restart < me.slurm_restart:
        return True
    if owner.host != me.host:
        return False
    if owner.pid == me.pid:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, under another user
    return abs(process_start_time(owner.pid) - owner.started) > _START_TOLERANCE_S


class RunDirLock:
    """The lock of one run directory, held from :meth:`acquire` to :meth:`release` (or a context)."""

    def __init__(self, run_dir: Path, environ: Mapping[str, str] = os.environ) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.me = LockOwner.this_process(environ)
        self.held = False

    def acquire(self) -> None:
        """Take the lock, creating the run directory; :class:`RunDirLocked` if a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a competitor may take over a stale lock between our steps: look again
            if self._create():
                self.held = True
                return
            owner = self._read_owner()
            if owner is None:
                continue  # released meanwhile, or half-written by a competitor: try again
            if not owner_is_gone(owner, self.me):
                raise RunDirLocked(
                    f"{self.path.parent} is in use by another run: {owner.describe()}. Wait for it to end, "
                    f"or choose another run.dir; if that run has ended, delete {self.path}"
                )
            log.warning("taking over %s from %s, which has ended", self.path, owner.describe())
            self._remove_if(owner)
        raise RunDirLocked(f"could not take {self.path}: other processes keep taking it; retry")

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self.held:
            self._remove_if(self.me)
            self.held = False

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _create(self) -> bool:
        """Exclusive create of the lock file with this process as owner; False if it exists."""
        tmp = self.path.with_name(f"{LOCK_FILE}.{self.me.pid}.tmp")
        atomic_write_text(tmp, json.dumps(asdict(self.me)))
        try:
            os.link(tmp, self.path)  # atomic: fails if the lock exists, never exposes a partial file
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _read_owner(self) -> LockOwner | None:
        try:
            return LockOwner(**json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError) as exc:
            raise RunDirLocked(
                f"{self.path} is not a lock this program wrote ({exc}); if no run uses {self.path.parent}, "
                "delete the file"
            ) from exc

    def _remove_if(self, owner: LockOwner) -> None:
        """Delete the lock only while it still names ``owner`` (rename first, so two takers never both
        delete a lock a third process has just created)."""
        aside = self.path.with_name(f"{LOCK_FILE}.{self.me.pid}.old")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            current = LockOwner(**json.loads(aside.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError):
            current = None
        if current is not None and current != owner:
            os.rename(aside, self.path)  # somebody else's fresh lock: put it back
            return
        aside.unlink(missing_ok=True)
