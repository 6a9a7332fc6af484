"""Mean and spread of a metric over the seeds of one setting, and the difference of two settings' means.

One run's number says little when seeds move it by as much as the change under study; these are the
numbers that say how much.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    """A metric over a group's runs, in run order; ``None`` for a run that has not logged it yet."""

    values: tuple[float | None, ...]

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        return cls(tuple(None if v is None else float(v) for v in values))

    @property
    def present(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def n(self) -> int:
        return len(self.present)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.present) if self.present else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1); ``None`` below two values."""
        return statistics.stdev(self.present) if self.n >= 2 else None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "values": list(self.values)}


# How the spread of a difference was estimated, named in the JSON output.
STDERR = "stderr"
SEED_STD = "seed_std"


@dataclass(frozen=True)
class Difference:
    """``value`` = group mean - baseline mean; ``spread`` = its uncertainty as ``spread_kind`` says."""

    value: float
    spread: float | None
    spread_kind: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "spread": self.spread, "spread_kind": self.spread_kind}


def difference(group: Stat, baseline: Stat) -> Difference | None:
    """The difference of the means with its spread; ``None`` when either side has no value yet.

    The spread is the standard error of the difference, sqrt(s1^2/n1 + s2^2/n2), when both sides have
    two or more seeds; else the seed standard deviation of the side that has one (how far one run
    strays from its setting's mean); else unknown.
    """
    if group.mean is None or baseline.mean is None:
        return None
    value = group.mean - baseline.mean
    if group.std is not None and baseline.std is not None:
        spread = math.sqrt(group.std**2 / group.n + baseline.std**2 / baseline.n)
        return Difference(value, spread, STDERR)
    seed_std = group.std if group.std is not None else baseline.std
    return Difference(value, seed_std, None if seed_std is None else SEED_STD)
