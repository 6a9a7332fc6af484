"""Stop signals from process start: setup ends at once, the loop records, a second Ctrl-C aborts."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from pcpretrain import stop_signals
from pcpretrain.stop_signals import (
    StopRequested,
    StopSignals,
    install_setup_handlers,
    outer_handler,
    restore_outer_handlers,
)


@pytest.fixture(autouse=True)
def python_ctrl_c_handler() -> Iterator[None]:
    """Start from Python's own Ctrl-C handler, as a command does, whatever an earlier test in this
    process left installed; put that back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_during_setup_raises_and_the_outer_handlers_are_kept_and_restored() -> None:
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        install_setup_handlers(["SIGUSR2", "SIGINT"])
        with pytest.raises(StopRequested, match="SIGUSR2 before training began"):
            signal.raise_signal(signal.SIGUSR2)
        outer = outer_handler(signal.SIGUSR2)
        assert callable(outer)
        outer(signal.SIGUSR2, None)
        assert calls == [signal.SIGUSR2]
        restore_outer_handlers()
        signal.raise_signal(signal.SIGUSR2)
        assert calls == [signal.SIGUSR2, signal.SIGUSR2]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_ctrl_c_is_recorded_once_and_a_second_one_aborts(monkeypatch: pytest.MonkeyPatch) -> None:
    stops = StopSignals(["SIGTERM"])
    stops.install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert stops.received == signal.SIGINT
        signal.raise_signal(signal.SIGINT)  # within the window: the same Ctrl-C forwarded by a launcher
        signal.raise_signal(signal.SIGTERM)  # already stopping: nothing more to do
        monkeypatch.setattr(stop_signals, "REPEAT_WINDOW_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        stops.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
