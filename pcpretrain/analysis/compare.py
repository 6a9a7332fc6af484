"""Compare finished or running runs: one summary row per run directory, and their validation curves.

A run directory holds the ``config.yaml`` and ``metrics.jsonl`` that training writes; a sweep
directory holds run directories one level down. Only those two files are read, so this works
on a copy of the outputs, without torch, while the runs are still training.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pcpretrain.analysis import agg_figure, text_table

# The names training writes (pcpretrain.train.run), repeated to keep this module free of torch.
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TRAIN_LOSS_TAIL = 0.1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRow:
    """What one run reached so far; ``None`` where it has not logged the value yet."""

    name: str
    optimizer: str
    degree: int
    lr: float
    steps: int
    final_train_loss: float | None
    final_val_loss: float | None
    tokens: int | None
    tokens_per_s: float | None
    max_steps: int | None = None


def is_run_dir(path: Path) -> bool:
    """A run directory is recognised by the two files training writes first."""
    return (path / CONFIG_FILE).is_file() and (path / METRICS_FILE).is_file()


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Each path is a run directory or a directory of runs; every run once, in the order given.

    A path that holds no run is an error naming it, so a typo does not shrink a comparison silently.
    """
    if not paths:
        raise ValueError("no paths given; name run directories or directories of runs")
    runs: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        for run in _runs_in(path):
            if run.resolve() not in seen:
                seen.add(run.resolve())
                runs.append(run)
    return runs


def _runs_in(path: Path) -> list[Path]:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if is_run_dir(path):
        return [path]
    runs = sorted(child for child in path.iterdir() if child.is_dir() and is_run_dir(child))
    if not runs:
        raise ValueError(
            f"{path}: no runs found; a run directory holds {CONFIG_FILE} and {METRICS_FILE}, "
            "a sweep directory holds run directories"
        )
    return runs


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a last line still being written by a running run is skipped."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a JSON record ({exc})") from exc
    return records


def _config_value(cfg: DictConfig, key: str, path: Path) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise ValueError(f"{path}: has no {key}; is it a pcpretrain run config?")
    return value


def summarize_run(run_dir: Path) -> RunRow:
    """The run's settings and results so far.

    ``final_train_loss`` is the mean over the last 10% of the logged train losses (at least one
    record), which smooths the step-to-step noise of a single batch; ``final_val_loss`` is the
    last logged one; ``tokens_per_s`` is the median, robust to slow first and evaluation steps.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    cfg = OmegaConf.load(config_path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{config_path}: not a mapping of config keys")
    records = read_records(run_dir / METRICS_FILE)
    losses = _values(records, "loss")
    tail = losses[-max(1, math.ceil(TRAIN_LOSS_TAIL * len(losses))) :]
    val_losses = _values(records, "val_loss")
    tokens = _values(records, "tokens")
    speeds = _values(records, "tokens_per_s")
    return RunRow(
        name=run_dir.name,
        optimizer=str(_config_value(cfg, "optimizer.name", config_path)),
        degree=int(_config_value(cfg, "pc.degree", config_path)),
        lr=float(_config_value(cfg, "optimizer.lr", config_path)),
        steps=max((int(record.get("step", 0)) for record in records), default=0),
        final_train_loss=statistics.fmean(tail) if tail else None,
        final_val_loss=val_losses[-1] if val_losses else None,
        tokens=int(tokens[-1]) if tokens else None,
        tokens_per_s=statistics.median(speeds) if speeds else None,
        max_steps=OmegaConf.select(cfg, "trainer.max_steps", default=None),
    )


def _values(records: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [record[key] for record in records if record.get(key) is not None]


def row_order(row: RunRow) -> tuple:
    """Rows group by optimizer, then PC degree, so the runs one compares sit next to each other."""
    return (row.optimizer, row.degree, row.lr, row.name)


def format_table(rows: Sequence[RunRow]) -> str:
    """An aligned text table, one line per run in :func:`row_order`; ``-`` where nothing is logged."""
    header = ["optimizer", "degree", "lr", "steps", "train loss", "val loss", "tokens", "tokens/s", "run"]
    right = [False, True, True, True, True, True, True, True, False]
    cells = [_row_cells(row) for row in sorted(rows, key=row_order)]
    return text_table(header, cells, right)


def _row_cells(row: RunRow) -> list[str]:
    steps = f"{row.steps}/{row.max_steps}" if row.max_steps else str(row.steps)
    return [
        row.optimizer,
        str(row.degree),
        f"{row.lr:.3g}",
        steps,
        _loss(row.final_train_loss),
        _loss(row.final_val_loss),
        _count(row.tokens),
        _count(row.tokens_per_s),
        row.name,
    ]


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _count(value: float | None) -> str:
    """Large counts with a k/M/B suffix and three significant digits."""
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def validation_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """Tokens seen and val_loss at each evaluation of the run (empty lists before the first)."""
    records = read_records(Path(run_dir) / METRICS_FILE)
    evaluations = [r for r in records if r.get("val_loss") is not None and "tokens" in r]
    return [r["tokens"] for r in evaluations], [r["val_loss"] for r in evaluations]


def plot_validation_curves(runs: Sequence[Path], out_png: Path) -> Path:
    """val_loss against tokens, one line per run labelled by its directory name, as a PNG.

    Runs without a validation record yet are left out and named in a logged warning (and, when
    no run has one, on the figure itself), so a missing line is never a silent surprise.
    """
    skipped = _draw_validation_curves(runs, Path(out_png))
    if skipped:
        log.warning("no val_loss logged yet, not plotted: %s", ", ".join(skipped))
    return Path(out_png)


def _draw_validation_curves(runs: Sequence[Path], out_png: Path) -> list[str]:
    """Write the plot; the names of the runs left out for want of a validation record."""
    figure = agg_figure()
    axes = figure.add_subplot()
    skipped = []
    for run in map(Path, runs):
        tokens, losses = validation_curve(run)
        if not losses:
            skipped.append(run.name)
            continue
        axes.plot(tokens, losses, marker=".", label=run.name)
    if len(skipped) < len(runs):
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no run has logged val_loss yet", ha="center", transform=axes.transAxes)
    axes.set_xlabel("tokens")
    axes.set_ylabel("validation loss")
    axes.grid(alpha=0.3)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return skipped


def compare(paths: Sequence[Path], out_png: Path | None = None) -> str:
    """The table of the runs under ``paths``, plus where the validation plot went and what it lacks.

    Everything to report is in the returned text; nothing is logged.
    """
    summaries = sorted(((summarize_run(run), run) for run in find_runs(paths)), key=lambda s: row_order(s[0]))
    lines = [format_table([row for row, _ in summaries])]
    if out_png is not None:
        skipped = _draw_validation_curves([run for _, run in summaries], Path(out_png))
        lines.append(f"validation curves: {out_png}")
        if skipped:
            lines.append(f"no val_loss logged yet, so not in the plot: {', '.join(skipped)}")
    return "\n".join(lines)
