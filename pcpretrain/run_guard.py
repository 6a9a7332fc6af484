"""One ``pcpretrain train`` run from its composed config to an exit code.

What a run on a shared cluster needs around the training itself: the run-directory lock (one run per
directory), every error written to the run's log as well as the console, no run directory left
behind by input that was refused before anything was written, and one documented exit code per
outcome (:mod:`pcpretrain.exit_codes`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from pcpretrain import exit_codes
from pcpretrain.config import ConfigError, to_train_config
from pcpretrain.config_validation import validate
from pcpretrain.run_lock import RunDirLock, RunDirLocked
from pcpretrain.stop_signals import StopRequested

if TYPE_CHECKING:
    from pcpretrain.train.run import RunSummary

log = logging.getLogger(__name__)

LOG_PREFIX = "train"


def run_guarded(dict_cfg: DictConfig, run_dir: Path) -> int:
    """Train the run in ``run_dir`` under its lock; print the summary; return the exit code."""
    rank = int(os.environ.get("RANK", "0"))
    created_here = holds_only_logs(run_dir)
    lock = RunDirLock(run_dir) if rank == 0 else None
    try:
        cfg = to_train_config(dict_cfg)
        cfg.run.dir = str(run_dir)
        # Before the heavy imports below, so bad input fails in a second; the launcher sets WORLD_SIZE.
        validate(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        if lock is not None:
            lock.acquire()
        from pcpretrain.train.run import run_training

        summary = run_training(cfg, run_dir)
    except (Exception, StopRequested, KeyboardInterrupt) as error:
        code = exit_code(error)
        report(error, code)
        if lock is not None:
            lock.release()
        if code == exit_codes.BAD_INPUT and created_here and rank == 0 and holds_only_logs(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        return code
    finally:
        if lock is not None:
            lock.release()
    return finish(summary, rank)


def finish(summary: RunSummary, rank: int) -> int:
    """Print the summary (rank 0); a run a signal stopped leaves through the stop's exit path."""
    if rank == 0:
        print("\n" + summary.render(), flush=True)
    if summary.stopped_by:
        from pcpretrain.train.preemption import exit_preempted

        exit_preempted(summary.stopped_by)
    return 0


def exit_code(error: BaseException) -> int:
    """The documented exit code of a run that ended with ``error``."""
    from pcpretrain.data.sources import DataSourceError
    from pcpretrain.errors import IncompatibleResume

    if isinstance(error, ConfigError | DataSourceError | RunDirLocked | IncompatibleResume):
        return exit_codes.BAD_INPUT
    if isinstance(error, StopRequested):
        return exit_codes.for_stop_signal(error.signal.name)
    if isinstance(error, KeyboardInterrupt):
        return exit_codes.INTERRUPTED
    return exit_codes.TRAINING_FAILED


def report(error: BaseException, code: int) -> None:
    """The error on the console and in the run's log files; a traceback only for the unforeseen."""
    from pcpretrain.errors import TrainingError

    foreseen = isinstance(error, ConfigError | TrainingError | StopRequested | KeyboardInterrupt) or (
        code == exit_codes.BAD_INPUT
    )
    if isinstance(error, ConfigError):
        message = f"configuration error: {error}"
    elif isinstance(error, KeyboardInterrupt):
        message = "interrupted (second Ctrl-C): aborted without a checkpoint"
    else:
        message = f"{type(error).__name__}: {error}"
    details = "" if foreseen else "\n" + "".join(traceback.format_exception(error)).rstrip()
    print(f"pcpretrain: {message}{details}", file=sys.stderr, flush=True)
    record = logging.LogRecord(LOG_PREFIX, logging.ERROR, __file__, 0, "%s (exit code %d)%s", None, None)
    record.args = (message, code, details)
    if isinstance(error, RunDirLocked):
        return  # the log belongs to the run that holds the directory
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def holds_only_logs(run_dir: Path) -> bool:
    """Whether ``run_dir`` is missing or holds nothing but this launch's log files (none of a run's)."""
    if not run_dir.is_dir():
        return True
    entries = list(run_dir.iterdir())  # dot files (a run's lock) count too
    return all(p.is_file() and p.name.startswith(LOG_PREFIX) and p.suffix == ".log" for p in entries)
