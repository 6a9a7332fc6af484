"""Errors that end a run with a clear message instead of a traceback."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run cannot go on; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The loss or gradient norm became NaN/inf; the optimizer step was not taken."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, incomplete, damaged or does not fit this run."""


class IncompatibleResume(CheckpointError):
    """The checkpoint to resume from was written for another run (shape, optimizer, data geometry)."""
