"""The numbers a comparison reports, computed once for both the text tables and the JSON document."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pcpretrain.analysis.run_files import find_runs, summarize_run
from pcpretrain.analysis.seed_groups import (
    DIFFERENCED,
    EVAL_PREFIX,
    RUN_METRICS,
    SeedGroup,
    default_baseline,
    group_runs,
    select_baseline,
)
from pcpretrain.analysis.seed_stats import Difference, difference


@dataclass(frozen=True)
class Comparison:
    """Groups of seeds, the group the others are measured against (if any) and the eval scores seen."""

    groups: list[SeedGroup]
    baseline: SeedGroup | None
    score_names: list[str]

    @property
    def metrics(self) -> list[str]:
        return [*RUN_METRICS, *self.score_metrics]

    @property
    def score_metrics(self) -> list[str]:
        return [EVAL_PREFIX + name for name in self.score_names]

    @property
    def differenced(self) -> list[str]:
        return [*DIFFERENCED, *self.score_metrics]

    def difference(self, group: SeedGroup, metric: str) -> Difference | None:
        """``group``'s mean minus the baseline's; ``None`` without a baseline, for the baseline itself,
        or while either side lacks the value."""
        if self.baseline is None or group is self.baseline:
            return None
        return difference(group.stat(metric), self.baseline.stat(metric))


def build_comparison(paths: Sequence[Path], baseline: str | None = None) -> Comparison:
    """Read the runs under ``paths`` and group them; ``baseline`` is ``KEY=VALUE[,KEY=VALUE...]``,
    or ``None`` for the one group without PC when there is one among several."""
    groups = group_runs([summarize_run(run) for run in find_runs(paths)])
    chosen = default_baseline(groups) if baseline is None else select_baseline(groups, baseline)
    names = sorted({name for group in groups for run in group.runs for name in run.eval_scores})
    return Comparison(groups, chosen, names)
