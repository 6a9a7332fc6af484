"""The text tables of a comparison: one row per group of seeds, means with their seed spread.

Every mean stands beside its spread (``mean ± std``) and every difference beside its own, so a gap
smaller than the seed noise reads as such. More eval scores than fit beside the losses go to a second,
long table (one row per score and group) that stays readable however many there are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pcpretrain.analysis import text_table
from pcpretrain.analysis.comparison import Comparison
from pcpretrain.analysis.seed_groups import EVAL_PREFIX, SeedGroup
from pcpretrain.analysis.seed_stats import Difference, Stat

# Eval scores shown as columns of the main table (each takes two wide ones); more go to the table below.
MAX_INLINE_SCORES = 1
PLUS_MINUS = " ± "

Format = Callable[[float], str]


def _four_decimals(value: float) -> str:
    return f"{value:.4f}"


def _four_significant(value: float) -> str:
    return f"{value:.4g}"


def format_tables(comparison: Comparison) -> str:
    """The main table, the long eval-score table when needed, and a line saying what a difference is."""
    parts = [_main_table(comparison)]
    if len(comparison.score_names) > MAX_INLINE_SCORES:
        parts.append(_score_table(comparison))
    if comparison.baseline is not None:
        parts.append(
            f"Δ = group mean - baseline mean ({comparison.baseline.label}); "
            "± = standard error of the difference if both n >= 2, else the seed std"
        )
    elif len(comparison.groups) > 1:
        parts.append("no baseline group: --baseline KEY=VALUE adds differences to one (e.g. pc.degree=0)")
    return "\n\n".join(parts)


def _main_table(c: Comparison) -> str:
    groups = c.groups
    columns: list[tuple[str, list[str], bool]] = [
        ("optimizer", [g.runs[0].optimizer for g in groups], False),
        ("degree", [str(g.runs[0].degree) for g in groups], True),
        ("lr", [f"{g.runs[0].lr:.3g}" for g in groups], True),
        ("n", [str(g.n) for g in groups], True),
        ("steps", [_steps(g) for g in groups], True),
        ("train loss", [_maybe(g.stat("train_loss").mean, _four_decimals) for g in groups], True),
        *_metric_columns(c, "val_loss", "val loss", _four_decimals),
    ]
    if any(g.stat("gmcn").n for g in groups):
        columns += _metric_columns(c, "gmcn", "GMCN", _four_significant)
    if len(c.score_names) <= MAX_INLINE_SCORES:
        for metric in c.score_metrics:
            columns += _metric_columns(c, metric, metric[len(EVAL_PREFIX) :], _four_decimals)
    columns += [
        ("tokens", [_count(_last_tokens(g)) for g in groups], True),
        ("tokens/s", [_count(g.stat("tokens_per_s").mean) for g in groups], True),
        ("runs", [_runs(g) for g in groups], False),
    ]
    header, cells, right = zip(*columns, strict=True)
    return text_table(header, list(zip(*cells, strict=True)), right)


def _metric_columns(c: Comparison, metric: str, title: str, fmt: Format) -> list[tuple[str, list[str], bool]]:
    """``title`` as mean ± std per group, then (with a baseline) its difference ± spread."""
    columns = [(title, _plus_minus([_stat_parts(g.stat(metric), fmt) for g in c.groups]), True)]
    if c.baseline is not None:
        parts = [_difference_parts(c, g, metric, fmt) for g in c.groups]
        columns.append((f"Δ {title}", _plus_minus(parts), True))
    return columns


def _score_table(c: Comparison) -> str:
    rows = []
    for metric in c.score_metrics:
        means = _plus_minus([_stat_parts(g.stat(metric), _four_decimals) for g in c.groups])
        differences = _plus_minus([_difference_parts(c, g, metric, _four_decimals) for g in c.groups])
        for group, mean, diff in zip(c.groups, means, differences, strict=True):
            row = [metric[len(EVAL_PREFIX) :], group.name, str(group.stat(metric).n), mean]
            rows.append(row + ([diff] if c.baseline is not None else []))
    header = ["eval score", "group", "n", "mean ± std"] + (["Δ ± spread"] if c.baseline is not None else [])
    return text_table(header, rows, [False, False, True, True, True][: len(header)])


def _stat_parts(stat: Stat, fmt: Format) -> tuple[str, str | None]:
    if stat.mean is None:
        return "-", None
    return fmt(stat.mean), _maybe(stat.std, fmt)


def _difference_parts(c: Comparison, group: SeedGroup, metric: str, fmt: Format) -> tuple[str, str | None]:
    if group is c.baseline:
        return "baseline", None
    found: Difference | None = c.difference(group, metric)
    if found is None:
        return "-", None
    sign = "+" if found.value >= 0 else ""
    return sign + fmt(found.value), _maybe(found.spread, fmt)


def _plus_minus(parts: Sequence[tuple[str, str | None]]) -> list[str]:
    """``mean ± spread`` cells whose ``±`` line up once right-aligned (a cell without one: just its text)."""
    width = max((len(spread) for _, spread in parts if spread is not None), default=0)
    return [text if spread is None else text + PLUS_MINUS + spread.ljust(width) for text, spread in parts]


def _steps(group: SeedGroup) -> str:
    steps = sorted({run.steps for run in group.runs})
    done = str(steps[0]) if len(steps) == 1 else f"{steps[0]}..{steps[-1]}"
    max_steps = group.runs[0].max_steps
    return f"{done}/{max_steps}" if max_steps else done


def _last_tokens(group: SeedGroup) -> float | None:
    return Stat.of(run.tokens for run in group.runs).mean


def _runs(group: SeedGroup) -> str:
    if group.n == 1:
        return group.name
    return f"{group.name} seed={','.join(str(run.seed) for run in group.runs)}"


def _maybe(value: float | None, fmt: Format) -> str:
    return "-" if value is None else fmt(value)


def _count(value: float | None) -> str:
    """Large counts with a k/M/B suffix and three significant digits."""
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"
