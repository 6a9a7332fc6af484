"""The learning rate a scheduler config will follow, as a table or a plot, before any training."""

from __future__ import annotations

from pathlib import Path

from pcpretrain.analysis import agg_figure, text_table
from pcpretrain.config import SchedulerConfig
from pcpretrain.optim.schedules import schedule_function

MAX_PLOTTED_STEPS = 2000


def preview_steps(total_steps: int, points: int) -> list[int]:
    """``points`` evenly spaced steps from 0 to ``total_steps - 1``, the first and last lr actually used.

    Fewer when the run has fewer steps than ``points``: no step is listed twice.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if points < 2:
        raise ValueError(f"points={points} must be >= 2 (the first and the last step)")
    last = total_steps - 1
    return sorted({round(i * last / (points - 1)) for i in range(points)})


def schedule_table(cfg: SchedulerConfig, total_steps: int, peak_lr: float, points: int = 11) -> str:
    """Step, multiplier and lr at ``points`` evenly spaced steps, to check a schedule at a glance."""
    schedule = schedule_function(cfg, total_steps)
    rows = []
    for step in preview_steps(total_steps, points):
        multiplier = schedule(step)
        rows.append([str(step), f"{multiplier:.4f}", f"{peak_lr * multiplier:.3e}"])
    return text_table(["step", "multiplier", "lr"], rows, right=[True, True, True])


def plot_schedule(cfg: SchedulerConfig, total_steps: int, peak_lr: float, out_png: Path) -> Path:
    """The lr over the run as a PNG, drawn through at most ``MAX_PLOTTED_STEPS`` evenly spaced steps.

    The warmup's last step is always drawn, so that the peak keeps its corner on long runs.
    """
    schedule = schedule_function(cfg, total_steps)
    steps = preview_steps(total_steps, max(2, min(total_steps, MAX_PLOTTED_STEPS)))
    if 0 < cfg.warmup_steps <= total_steps:
        steps = sorted({*steps, cfg.warmup_steps - 1})
    figure = agg_figure()
    axes = figure.add_subplot()
    axes.plot(steps, [peak_lr * schedule(step) for step in steps])
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("learning rate")
    axes.set_title(f"{cfg.name}: warmup {cfg.warmup_steps}, end ratio {cfg.end_ratio}, {total_steps} steps")
    axes.grid(alpha=0.3)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return out_png
