"""The JSON document of a comparison, for scripts: every number of the tables, with the values behind them."""

from __future__ import annotations

from typing import Any

from pcpretrain.analysis.comparison import Comparison
from pcpretrain.analysis.seed_groups import RESULT_NEUTRAL_KEYS, SeedGroup


def comparison_document(
    comparison: Comparison, plot: str | None = None, not_plotted: list[str] | None = None
) -> dict[str, Any]:
    """Groups with their label, settings, runs, per-metric ``n``/``mean``/``std``/``values`` (in run
    order, ``null`` where a run has not logged the metric) and differences to the baseline group."""
    baseline = comparison.baseline
    return {
        "baseline": None if baseline is None else baseline.label,
        "grouping_ignores": list(RESULT_NEUTRAL_KEYS),
        "groups": [_group(comparison, group) for group in comparison.groups],
        "plot": plot,
        "not_plotted": not_plotted or [],
    }


def _group(c: Comparison, group: SeedGroup) -> dict[str, Any]:
    differences = None
    if c.baseline is not None and group is not c.baseline:
        found = {metric: c.difference(group, metric) for metric in c.differenced}
        differences = {metric: None if d is None else d.as_dict() for metric, d in found.items()}
    return {
        "label": group.label,
        "settings": group.settings,
        "n": group.n,
        "is_baseline": group is c.baseline,
        "runs": [
            {
                "name": run.name,
                "path": str(run.path),
                "seed": run.seed,
                "steps": run.steps,
                "max_steps": run.max_steps,
                "tokens": run.tokens,
            }
            for run in group.runs
        ],
        "metrics": {metric: group.stat(metric).as_dict() for metric in c.metrics},
        "differences": differences,
    }
