"""The validation curves of a comparison: one line per group, the range of its seeds shaded around it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from pcpretrain.analysis import agg_figure
from pcpretrain.analysis.seed_groups import SeedGroup


def group_curve(group: SeedGroup) -> tuple[list[float], list[float], list[float], list[float]]:
    """Tokens, and the mean, min and max val_loss over the group's runs at each evaluation all of them
    have logged (so a mean never mixes seeds in and out as running runs catch up)."""
    curves = [dict(run.val_curve) for run in group.runs]
    tokens = sorted(set.intersection(*(set(curve) for curve in curves)))
    losses = [[curve[t] for curve in curves] for t in tokens]
    return tokens, [statistics.fmean(v) for v in losses], [min(v) for v in losses], [max(v) for v in losses]


def draw_validation_curves(groups: Sequence[SeedGroup], out_png: Path) -> list[str]:
    """Write val_loss against tokens as a PNG; the names of the groups left out for want of a common
    evaluation (named on the figure itself when no group has one)."""
    figure = agg_figure()
    axes = figure.add_subplot()
    skipped = []
    for group in groups:
        tokens, mean, low, high = group_curve(group)
        if not tokens:
            skipped.append(group.name)
            continue
        label = group.name if group.n == 1 else f"{group.name} (n={group.n})"
        (line,) = axes.plot(tokens, mean, marker=".", label=label)
        if group.n > 1:
            axes.fill_between(tokens, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if len(skipped) < len(groups):
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no run has logged val_loss yet", ha="center", transform=axes.transAxes)
    axes.set_xlabel("tokens")
    axes.set_ylabel("validation loss (mean, seed range shaded)")
    axes.grid(alpha=0.3)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return skipped
