"""Stop signals, handled from the moment ``pcpretrain train`` starts until it exits.

Before the training loop (composing the config, preparing data, building the model, loading a
checkpoint) there is nothing new to save, so a stop signal ends the setup at once by raising
:class:`StopRequested`; the run exits with the signal's code and nothing half-written. During the loop
:class:`StopSignals` only records the signal: every rank then stops at one agreed step and writes a
checkpoint (:mod:`pcpretrain.train.preemption`). SIGINT (Ctrl-C) is always such a signal; a second
Ctrl-C, at least :data:`REPEAT_WINDOW_S` after the first, aborts without saving (a launcher that
forwards the same Ctrl-C to its workers delivers it twice within that window).

Handlers that were installed before ours (submitit's, for requeueing) are kept: :func:`outer_handler`
returns them so that the exit path can still call them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from pcpretrain.config import STOP_SIGNALS

log = logging.getLogger(__name__)

REPEAT_WINDOW_S = 1.0
Handler = Callable[[int, FrameType | None], Any] | int | None

_outer_handlers: dict[signal.Signals, Handler] = {}


class StopRequested(BaseException):
    """A stop signal arrived before training began (a BaseException: no ``except Exception`` hides it)."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum)
        super().__init__(f"received {self.signal.name} before training began; nothing new to save")


def _stop_during_setup(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)


def install_setup_handlers(names: Sequence[str] = STOP_SIGNALS) -> None:
    """From process start: every stop signal ends the setup (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in names:
        signum = signal.Signals[name]
        previous = signal.signal(signum, _stop_during_setup)
        if previous is not _stop_during_setup:
            _outer_handlers[signum] = previous


def restore_outer_handlers() -> None:
    """Put back the handlers :func:`install_setup_handlers` replaced (the command is over)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in _outer_handlers.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    _outer_handlers.clear()


def outer_handler(signum: signal.Signals) -> Handler:
    """The handler someone else installed for ``signum`` before ours (submitit's), else the current one."""
    return _outer_handlers.get(signum, signal.getsignal(signum))


class StopSignals:
    """Records the first stop signal received; the previous handlers come back on :meth:`restore`."""

    def __init__(self, names: Sequence[str]) -> None:
        self.signals = [signal.Signals[name] for name in names]
        if signal.SIGINT not in self.signals:
            self.signals.append(signal.SIGINT)
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self._previous: dict[signal.Signals, Handler] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: stop signals %s will not be handled", self.signals)
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._record)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        received = signal.Signals(signum)
        if self.received is None:
            self.received, self._received_at = received, time.monotonic()
            hint = " (Ctrl-C again to abort without saving)" if received == signal.SIGINT else ""
            log.warning("received %s: stopping after this step to write a checkpoint%s", received.name, hint)
        elif received == signal.SIGINT and time.monotonic() - self._received_at >= REPEAT_WINDOW_S:
            log.warning("received SIGINT again: aborting without a checkpoint")
            raise KeyboardInterrupt
