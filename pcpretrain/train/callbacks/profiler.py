"""A torch-profiler trace of chosen optimizer steps: the first thing to look at when a run is slow.

Only the chosen steps on the chosen ranks are profiled; every other step costs one comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from pcpretrain.train.callbacks.base import Callback

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer

log = logging.getLogger(__name__)

TOP_OPS_ROWS = 40
# The Trainer labels each phase of a step with phase(<name>); the table finds them by this prefix.
PHASE_PREFIX = "phase: "


def phase(name: str) -> record_function:
    """A profiler range for one phase of a step, listed first in the top-ops table (cheap when no
    profiler runs)."""
    return record_function(PHASE_PREFIX + name)


class Profiler(Callback):
    """Profiles optimizer steps ``steps[0]`` to ``steps[1]`` (1-based, inclusive) on ``ranks``.

    The profiler starts before the first chosen step and stops after the last one, or at the run's
    end or error if it stops sooner. Then ``out_dir`` receives ``trace_rank<R>_steps<A>-<B>.json``
    (Chrome/Perfetto) and ``top_ops_rank<R>_steps<A>-<B>.txt``: the time per step of each of the
    Trainer's phases (its ``phase: ...`` labels: PC begin, micro-batches, PC finish, clip, optimizer,
    spectral update), then the ops by self device time when CUDA was profiled, else self CPU time;
    A-B being the steps actually profiled.

    Put it first in the callback list, before the speed monitor: the files are written at the next
    step's start, which is then outside any step's measured time.
    """

    def __init__(
        self, steps: tuple[int, int], ranks: Sequence[int], out_dir: Path, *, with_stack: bool = False
    ) -> None:
        self.first, self.last = steps
        self.ranks = frozenset(ranks)
        self.out_dir = out_dir
        self.with_stack = with_stack
        self.files: list[Path] = []
        self._waiting = False  # this rank is chosen and the range is still ahead
        self._rank = 0
        self._cuda = False
        self._profile: profile | None = None
        self._step_label: record_function | None = None
        self._from = self._to = 0  # the steps profiled so far
        self._unwritten: profile | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self._rank = trainer.accelerator.process_index
        self._waiting = self._rank in self.ranks
        if self._waiting and trainer.state.step >= self.last:
            self._waiting = False
            log.warning(
                "trainer.profile=%d-%d: this run starts after step %d, so nothing is profiled",
                self.first,
                self.last,
                trainer.state.step,
            )

    def on_step_start(self, trainer: Trainer) -> None:
        if self._unwritten is not None:
            self._write()
        step = trainer.state.step + 1
        if not self._waiting or step < self.first:
            return
        if self._profile is None:
            self._start(trainer, step)
        self._to = step
        self._step_label = record_function(f"optimizer step {step}")
        self._step_label.__enter__()

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self._profile is None:
            return
        self._end_step_label()
        if trainer.state.step >= self.last:
            self._stop(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._profile is not None:
            self._end_step_label()
            self._stop(trainer)
        if self._unwritten is not None:
            self._write()

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        """Keep what was traced up to the failure; a failure to write must not hide ``error``."""
        try:
            self.on_train_end(trainer)
        except Exception as exc:
            log.warning("could not write the profile of steps %d-%d: %s", self._from, self._to, exc)

    def _start(self, trainer: Trainer, step: int) -> None:
        self._cuda = trainer.accelerator.device.type == "cuda"
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if self._cuda else [])]
        self._profile = profile(activities=activities, record_shapes=True, with_stack=self.with_stack)
        if self._cuda:
            torch.cuda.synchronize(trainer.accelerator.device)
        self._profile.start()
        self._from = step
        log.info("profiling steps %d-%d on rank %d", step, self.last, self._rank)

    def _end_step_label(self) -> None:
        if self._step_label is not None:
            self._step_label.__exit__(None, None, None)
            self._step_label = None

    def _stop(self, trainer: Trainer) -> None:
        """Close the window once the device has run the queued work; the files are written later."""
        if self._cuda:
            torch.cuda.synchronize(trainer.accelerator.device)
        self._unwritten, self._profile = self._profile, None
        self._waiting = False
        self._unwritten.stop()

    def _write(self) -> None:
        """The trace and the top-ops table of the closed window, named by the steps it covers."""
        done, self._unwritten = self._unwritten, None
        tag = f"rank{self._rank}_steps{self._from}-{self._to}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / f"trace_{tag}.json"
        table = self.out_dir / f"top_ops_{tag}.txt"
        done.export_chrome_trace(str(trace))
        sort_by = "self_device_time_total" if self._cuda else "self_cpu_time_total"
        averages = done.key_averages()
        phases = phase_table(averages, self._to - self._from + 1, self._cuda)
        table.write_text(phases + averages.table(sort_by=sort_by, row_limit=TOP_OPS_ROWS) + "\n")
        self.files += [trace, table]
        log.info(
            "profile of steps %d-%d (rank %d): %s (open it at https://ui.perfetto.dev); top ops: %s",
            self._from,
            self._to,
            self._rank,
            trace,
            table,
        )


def phase_table(averages: Any, steps: int, cuda: bool) -> str:
    """Milliseconds per step in each ``phase: ...`` range (host time, and device time of the kernels
    launched inside it when CUDA was profiled): where a slow step's time goes, before the op detail."""
    rows = sorted((e for e in averages if e.key.startswith(PHASE_PREFIX)), key=lambda e: -e.cpu_time_total)
    if not rows:
        return ""
    width = max(len(e.key) for e in rows) - len(PHASE_PREFIX)
    header = f"{'phase':{width}}  {'host ms/step':>12}" + (f"  {'device ms/step':>14}" if cuda else "")
    lines = [header]
    for event in rows:
        line = f"{event.key[len(PHASE_PREFIX) :]:{width}}  {event.cpu_time_total / 1e3 / steps:12.2f}"
        if cuda:
            line += f"  {event.device_time_total / 1e3 / steps:14.2f}"
        lines.append(line)
    return "\n".join(lines) + "\n\n"
