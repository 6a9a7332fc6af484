"""Errors that end a run with a clear message instead of a traceback (no imports: every layer may use
them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


class TrainingError(RuntimeError):
    """A run cannot go on; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The loss or gradient norm became NaN/inf; the optimizer step was not taken."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, incomplete, damaged or does not fit this run."""


class IncompatibleResume(CheckpointError):
    """The checkpoint to resume from was written for another run (shape, optimizer, data geometry)."""
