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


def compile_failure_message(what: str, error: BaseException, remedy: str) -> str:
    """``torch.compile could not compile <what> (<cause>); <remedy>``: the cause on one line and at most
    300 characters, since dynamo's own message runs over many lines of internals."""
    cause = " ".join(str(error).split())[:300] or type(error).__name__
    return f"torch.compile could not compile {what} ({cause}); {remedy}"


def error_summary(error: BaseException) -> str:
    """``Type: first line of the message`` (or the type alone): a failure on one line of a table, whose
    traceback went to stderr."""
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0]}" if message else type(error).__name__
