"""The figures of ``pcpretrain spectra``: sigma / sigma_1 histograms, MCN per layer, GMCN over steps.

Runs are told apart by the ``run`` each report carries; the histograms and the per-layer MCNs show
each run's newest checkpoint, the GMCN curve all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.ticker import LogFormatter, MaxNLocator

from pcpretrain.analysis import agg_figure
from pcpretrain.spectra.analysis import SpectraReport
from pcpretrain.spectra.measures import HIDDEN_KINDS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HISTOGRAM_PNG = "sigma_histogram.png"
MCN_PNG = "mcn_per_layer.png"
GMCN_PNG = "gmcn_vs_step.png"
_KIND_COLUMNS = 4


def by_run(reports: Sequence[SpectraReport]) -> dict[str, list[SpectraReport]]:
    """Reports grouped by run (in the order runs first appear), each run's in step order."""
    runs: dict[str, list[SpectraReport]] = {}
    for report in reports:
        runs.setdefault(str(report.extra.get("run", "")), []).append(report)
    return {run: sorted(found, key=_step_key) for run, found in runs.items()}


def _step_key(report: SpectraReport) -> int:
    return -1 if report.step is None else report.step


def _newest(reports: Sequence[SpectraReport]) -> dict[str, SpectraReport]:
    return {run: found[-1] for run, found in by_run(reports).items()}


def _label(run: str, report: SpectraReport) -> str:
    return f"{run} (step {report.step})" if report.step is not None else run


def plot_sigma_histogram(reports: Sequence[SpectraReport], out_png: Path) -> Path:
    """Density of sigma / sigma_1 over each run's newest checkpoint, PC layers and the rest side by side.

    PC layers are described by the transform without gamma, so runs with and without PC compare
    directly; a run whose matrices are all of one group is drawn in that panel only.
    """
    figure = agg_figure(11.0, 4.2)
    panels = figure.subplots(1, 2, sharey=True)
    titles = {True: "PC-preconditioned matrices (transform without gamma)", False: "other hidden matrices"}
    for axes, pc in zip(panels, (True, False), strict=True):
        drawn = False
        for run, report in _newest(reports).items():
            counts = report.histogram(pc=pc)
            total = sum(counts)
            if not total:
                continue
            width = 1.0 / len(counts)
            edges = [i * width for i in range(len(counts) + 1)]
            axes.stairs([count / (total * width) for count in counts], edges, label=_label(run, report))
            drawn = True
        if drawn:
            axes.set_yscale("log")
            axes.legend(fontsize="small")
        else:
            axes.text(0.5, 0.5, "no such matrices", ha="center", transform=axes.transAxes)
        axes.set_title(titles[pc], fontsize="medium")
        axes.set_xlabel("sigma / sigma_1")
        axes.set_xlim(0.0, 1.0)
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("density")
    figure.suptitle("Singular values relative to the largest, per matrix, pooled")
    return _save(figure, out_png)


def plot_mcn_per_layer(reports: Sequence[SpectraReport], out_png: Path) -> Path:
    """MCN against layer index for each matrix kind, one line per run (its newest checkpoint); filled
    markers where the matrix is a PC layer. The panel after the last kind holds the legend."""
    newest = _newest(reports)
    rows = math.ceil((len(HIDDEN_KINDS) + 1) / _KIND_COLUMNS)
    figure = agg_figure(3.2 * _KIND_COLUMNS, 2.8 * rows + 0.6)
    panels = [axes for row in figure.subplots(rows, _KIND_COLUMNS, squeeze=False) for axes in row]
    for axes, kind in zip(panels, HIDDEN_KINDS, strict=False):
        for index, (run, report) in enumerate(newest.items()):
            matrices = [m for m in report.matrices if m.kind == kind]
            color = f"C{index % 10}"
            layers, mcns = [m.layer for m in matrices], [m.mcn for m in matrices]
            axes.plot(layers, mcns, color=color, label=_label(run, report))
            faces = [color if m.pc else "none" for m in matrices]
            axes.scatter(layers, mcns, s=16, facecolors=faces, edgecolors=color, zorder=3)
        axes.set_title(kind, fontsize="medium")
        axes.set_xlabel("layer")
        axes.set_ylabel("MCN")
        _plain_log_y(axes)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for axes in panels[len(HIDDEN_KINDS) :]:
        axes.axis("off")
    handles, labels = panels[0].get_legend_handles_labels()
    if handles:
        panels[len(HIDDEN_KINDS)].legend(
            handles, labels, loc="center", fontsize="small", title="filled: PC layer"
        )
    figure.suptitle("MCN (sigma_1 / mean of the smallest 10% of singular values) per layer")
    return _save(figure, out_png)


def plot_gmcn_vs_step(reports: Sequence[SpectraReport], out_png: Path) -> Path:
    """GMCN over all hidden matrices against the training step, one line per run, a marker per checkpoint."""
    figure = agg_figure()
    axes = figure.add_subplot()
    for run, found in by_run(reports).items():
        points = [(r.step, r.gmcn()) for r in found if r.step is not None and r.gmcn() is not None]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=run)
    if axes.lines:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no checkpoint with a known step", ha="center", transform=axes.transAxes)
    axes.set_xlabel("step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("GMCN (geometric mean of MCNs)")
    _plain_log_y(axes)
    axes.set_title("GMCN of the hidden matrices over training")
    axes.grid(alpha=0.3)
    return _save(figure, out_png)


def plot_spectra(reports: Sequence[SpectraReport], out_dir: Path) -> list[Path]:
    """The three figures in ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    return [
        plot_sigma_histogram(reports, out_dir / HISTOGRAM_PNG),
        plot_mcn_per_layer(reports, out_dir / MCN_PNG),
        plot_gmcn_vs_step(reports, out_dir / GMCN_PNG),
    ]


def _plain_log_y(axes: Axes) -> None:
    """A log y axis whose labels are plain numbers (``24.4``, not ``2.44 x 10^1``), minor ones too when
    the range spans less than a few decades."""
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _save(figure: Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return out_png
