"""Preemption: a stop signal on any rank makes every rank stop after the same step and checkpoint.

SLURM warns a job before its time limit (``--signal=USR1@<s>``) and sends SIGTERM before
preempting it; ``scancel --signal`` and submitit (SIGUSR2) do the same. The handler only records
the signal. After each step the ranks add up their flags in one all-reduce, so a signal seen by one
rank alone still stops all of them at the same step (on the host, through a gloo group: agreeing on
a flag must not make the host wait for the device's queued work); the checkpointing callback then
writes the ``trainer.stop_at``-style checkpoint, and the process exits with
:data:`pcpretrain.exit_codes.PREEMPTED` (75) so the batch script (or submitit) requeues the job,
which resumes from that checkpoint on its own (``resume=auto``).
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.distributed as dist

from pcpretrain.exit_codes import for_stop_signal
from pcpretrain.sharding import host_group, is_distributed
from pcpretrain.stop_signals import StopSignals, outer_handler
from pcpretrain.train.callbacks.base import Callback

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer

log = logging.getLogger(__name__)


class Preemption(Callback):
    """Stops all ranks at one agreed step when any rank received a stop signal.

    Must come before the checkpointing callback, which then sees the run at its last step.
    """

    def __init__(self, stop_signals: StopSignals) -> None:
        self.stop_signals = stop_signals
        self.stopped_by: str | None = None
        self.distributed = False
        self.group: dist.ProcessGroup | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.stop_signals.install()
        self.distributed = is_distributed()
        if self.distributed:
            self.group = host_group()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self._any_rank_signalled() and not trainer.at_last_step:
            self.stopped_by = self.stop_signals.received.name if self.stop_signals.received else "peer rank"
            trainer.stop_after_this_step()
            log.warning("stopping at step %d (%s); a checkpoint follows", trainer.state.step, self.stopped_by)

    def _any_rank_signalled(self) -> bool:
        received = self.stop_signals.received is not None
        if not self.distributed:
            return received
        flag = torch.tensor([float(received)])
        dist.all_reduce(flag, group=self.group)
        return bool(flag.item())  # a CPU tensor: no device synchronisation

    def on_train_end(self, trainer: Trainer) -> None:
        self.stop_signals.restore()

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        self.stop_signals.restore()


def exit_preempted(signal_name: str | None) -> NoReturn:
    """Leave with the stop's exit code (75, or 130 for Ctrl-C), first letting an outer handler
    (submitit's requeue) run."""
    if signal_name in signal.Signals.__members__ and signal_name != "SIGINT":
        handler = outer_handler(signal.Signals[signal_name])
        if callable(handler):
            handler(signal.Signals[signal_name], None)
    # srun answers the first rank's exit with SIGTERM to the others; a rank still shutting down must
    # not die of it, or srun reports 143 instead of 75 and the job is not requeued.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(for_stop_signal(signal_name))
