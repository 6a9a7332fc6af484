"""Runs that differ only in their seed form one group: one setting, measured as often as it was run.

Groups are told apart by their configs, not by directory names, so runs from several sweeps or copied
directories group the same way; a group's label names the config keys whose values differ between groups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pcpretrain.analysis.run_files import RunSummary
from pcpretrain.analysis.seed_stats import Stat

# Config keys that change where or how a run is recorded, watched, stopped or resumed, but not what it
# learns: runs that differ only in these are seeds of one setting. "x.*" covers every key under x.
RESULT_NEUTRAL_KEYS = (
    "seed",
    "resume",
    "run.*",
    "logger.*",
    "checkpoint.*",
    "spectral.*",  # a monitor only
    "trainer.stop_at",
    "trainer.profile",
    "trainer.profile_ranks",
    "trainer.log_every",
    "distributed.timeout_s",
    "distributed.stop_signals",
)
# The keys a label leads with, and those every group's settings report.
LEADING_KEYS = ("optimizer.name", "pc.degree")
REPORTED_KEYS = (*LEADING_KEYS, "optimizer.lr")

# Per-run metrics of a group, by their name in the JSON output; eval scores follow as "eval/<name>".
RUN_METRICS = {
    "val_loss": lambda run: run.final_val_loss,
    "train_loss": lambda run: run.final_train_loss,
    "gmcn": lambda run: run.gmcn,
    "tokens_per_s": lambda run: run.tokens_per_s,
}
EVAL_PREFIX = "eval/"
# The metrics compared with the baseline group (with every eval score).
DIFFERENCED = ("val_loss", "gmcn")


def is_result_neutral(key: str) -> bool:
    """Whether ``key`` is one of :data:`RESULT_NEUTRAL_KEYS` or lies under one of its ``x.*`` patterns."""
    return any(
        key == pattern or (pattern.endswith(".*") and key.startswith(pattern[:-1]))
        for pattern in RESULT_NEUTRAL_KEYS
    )


def format_value(value: Any) -> str:
    """A config value as one writes it in an override: ``0.003``, ``true``, ``null``, ``[a, b]``."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class SeedGroup:
    """Runs of one setting (``setting``: every result-relevant config key), ordered by seed."""

    label: str
    setting: dict[str, Any]
    label_keys: tuple[str, ...]
    runs: tuple[RunSummary, ...]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def name(self) -> str:
        """A single run's directory name (what one looks for), else the label."""
        return self.runs[0].name if self.n == 1 else self.label

    @property
    def settings(self) -> dict[str, Any]:
        """The values that describe the group: optimizer, degree, lr and the keys of its label."""
        keys = dict.fromkeys([*REPORTED_KEYS, *self.label_keys])
        return {key: self.setting.get(key) for key in keys}

    def stat(self, metric: str) -> Stat:
        if metric.startswith(EVAL_PREFIX):
            return Stat.of(run.eval_scores.get(metric[len(EVAL_PREFIX) :]) for run in self.runs)
        return Stat.of(RUN_METRICS[metric](run) for run in self.runs)


def group_runs(runs: Sequence[RunSummary]) -> list[SeedGroup]:
    """The groups of ``runs``, ordered by optimizer, PC degree, lr and label; each group's runs by seed."""
    buckets: dict[str, list[RunSummary]] = {}
    for run in runs:
        buckets.setdefault(_setting_key(_setting(run)), []).append(run)
    settings = [_setting(members[0]) for members in buckets.values()]
    label_keys = _differing_keys(settings) if len(settings) > 1 else LEADING_KEYS
    groups = [
        SeedGroup(
            label=" ".join(f"{key}={format_value(setting.get(key))}" for key in label_keys),
            setting=setting,
            label_keys=label_keys,
            runs=tuple(sorted(members, key=_run_order)),
        )
        for setting, members in zip(settings, buckets.values(), strict=True)
    ]
    return sorted(groups, key=lambda g: (g.runs[0].optimizer, g.runs[0].degree, g.runs[0].lr, g.label))


def _setting(run: RunSummary) -> dict[str, Any]:
    return {key: value for key, value in run.config.items() if not is_result_neutral(key)}


def _setting_key(setting: dict[str, Any]) -> str:
    return json.dumps(setting, sort_keys=True)


def _differing_keys(settings: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """Keys whose values are not the same in every setting (a missing key counts as null)."""
    every_key = dict.fromkeys(key for setting in settings for key in setting)
    differing = [key for key in every_key if len({json.dumps(s.get(key)) for s in settings}) > 1]
    return tuple(sorted(differing, key=lambda k: LEADING_KEYS.index(k) if k in LEADING_KEYS else 2))


def _run_order(run: RunSummary) -> tuple:
    seed = run.seed
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed)), run.name


def default_baseline(groups: Sequence[SeedGroup]) -> SeedGroup | None:
    """The one group without PC when there are several groups to compare with it; else none."""
    without_pc = [group for group in groups if group.runs[0].degree == 0]
    return without_pc[0] if len(groups) > 1 and len(without_pc) == 1 else None


def select_baseline(groups: Sequence[SeedGroup], spec: str) -> SeedGroup:
    """The one group whose config has every ``KEY=VALUE`` of ``spec`` (comma separated)."""
    wanted = _parse_spec(spec)
    for key in wanted:
        if is_result_neutral(key):
            raise ValueError(f"--baseline {key}: this key does not tell groups apart (grouping ignores it)")
        if not any(key in group.setting for group in groups):
            raise ValueError(f"--baseline {key}: no run's config has this key")
    matches = [g for g in groups if all(_matches(g.setting.get(k), v) for k, v in wanted.items())]
    if len(matches) != 1:
        found = "no group has" if not matches else f"{len(matches)} groups have"
        listed = "\n  ".join(group.label for group in groups)
        raise ValueError(f"--baseline: {found} {spec}; the groups are:\n  {listed}")
    return matches[0]


def _parse_spec(spec: str) -> dict[str, str]:
    pairs = [part.partition("=") for part in spec.split(",")]
    if not spec or any(not key.strip() or not sep for key, sep, _ in pairs):
        raise ValueError(f"--baseline {spec!r}: expected KEY=VALUE[,KEY=VALUE...], e.g. pc.degree=0")
    return {key.strip(): value.strip() for key, _, value in pairs}


def _matches(actual: Any, wanted: str) -> bool:
    """``wanted`` as written on a command line: ``3e-3`` matches 0.003, ``true`` matches True."""
    if format_value(actual) == wanted:
        return True
    if isinstance(actual, int | float) and not isinstance(actual, bool):
        try:
            return float(wanted) == float(actual)
        except ValueError:
            return False
    return False
