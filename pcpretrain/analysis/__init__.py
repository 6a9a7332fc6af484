"""Looking at runs without training: schedule previews, comparisons, spectra and evaluation.

- ``schedule_preview``: the lr a config will follow.
- ``compare`` (with ``run_files``, ``seed_groups``, ``seed_stats``, ``comparison``, ``compare_table``,
  ``compare_json``, ``compare_plot``): runs grouped by everything but the seed, mean and spread per
  group, differences to a baseline group, validation curves with the seed range shaded.
- ``spectra_report`` (with ``checkpoint_sources``, ``spectra_plots``): singular values, MCN and
  GMCN of the hidden matrices of merged or unmerged checkpoints, read layer by layer.
- ``model_eval`` (with ``merged_model``, ``heldout``, ``downstream``, ``eval_results``,
  ``eval_errors``): held-out perplexity and lm-evaluation-harness tasks on a merged model, saved as
  ``eval.json`` beside it.

This package's ``__init__`` holds only what several share; it imports none of them, so each stays
importable on its own and ``matplotlib`` is needed only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Cells padded to their column's width, numbers (``right``) right-aligned so digits line up."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if align_right else cell.ljust(width)
            for cell, width, align_right in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def agg_figure(width: float = 7.0, height: float = 4.0) -> Figure:
    """A figure drawn by the Agg canvas, leaving pyplot's global backend and state untouched."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from exc
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure
