"""The exit codes of ``pcpretrain train``, one meaning each, for batch scripts and schedulers.

- :data:`TRAINING_FAILED` (1): the run failed while training (a non-finite loss, a failed save, a
  crash); the last good checkpoint is intact.
- :data:`BAD_INPUT` (2): the config, the data, the resume point or the run directory was refused
  before anything in the run directory was written; fix the input and run again.
- :data:`PREEMPTED` (75, ``EX_TEMPFAIL``): a stop signal (SIGTERM, SIGUSR1, SIGUSR2) ended the run
  after a checkpoint, or before training began; rerunning the command resumes. ``slurm/train.sbatch``
  and submitit requeue the job on it.
- :data:`INTERRUPTED` (130, 128 + SIGINT): Ctrl-C; the first saves a checkpoint and stops, a second
  aborts at once.
"""

from __future__ import annotations

TRAINING_FAILED = 1
BAD_INPUT = 2
PREEMPTED = 75
INTERRUPTED = 130


def for_stop_signal(signal_name: str | None) -> int:
    """The exit code of a run that a signal stopped: Ctrl-C's own, or the requeue code."""
    return INTERRUPTED if signal_name == "SIGINT" else PREEMPTED
