"""The two ways ``pcpretrain eval`` fails, told apart because the command's exit code differs."""

from __future__ import annotations


class EvalInputError(ValueError):
    """A bad argument or path: the command was asked for something it cannot do (exit code 2)."""


class EvalError(RuntimeError):
    """Evaluation was set up correctly but could not run (exit code 1)."""
