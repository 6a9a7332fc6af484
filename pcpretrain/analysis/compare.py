"""Compare finished or running runs: one row per setting with its seed noise, and the validation curves.

A run directory holds the ``config.yaml`` and ``metrics.jsonl`` that training writes; a sweep directory
holds run directories one level down. Runs whose configs differ only in the seed (and keys that do not
change results) are one group, reported as mean ± std over its seeds and, against a baseline group, as a
difference with its spread. The pieces: :mod:`~pcpretrain.analysis.run_files` reads a run,
:mod:`~pcpretrain.analysis.seed_groups` groups runs, :mod:`~pcpretrain.analysis.seed_stats` holds the
statistics, :mod:`~pcpretrain.analysis.comparison` computes the report once for
:mod:`~pcpretrain.analysis.compare_table`, :mod:`~pcpretrain.analysis.compare_json` and
:mod:`~pcpretrain.analysis.compare_plot`. None imports torch, so this runs on copies of the outputs while
the runs are still training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pcpretrain.analysis.compare_json import comparison_document
from pcpretrain.analysis.compare_plot import draw_validation_curves
from pcpretrain.analysis.compare_table import format_tables
from pcpretrain.analysis.comparison import build_comparison


def compare(
    paths: Sequence[Path], out_png: Path | None = None, baseline: str | None = None, as_json: bool = False
) -> str:
    """The tables (or, ``as_json``, the JSON document) of the runs under ``paths``; with ``out_png``, the
    validation curves are drawn there and the text says where and which groups they lack.

    ``baseline``: ``KEY=VALUE[,KEY=VALUE...]`` picking the group the others are compared with.
    Everything to report is in the returned text; nothing is logged.
    """
    comparison = build_comparison(paths, baseline)
    skipped = draw_validation_curves(comparison.groups, Path(out_png)) if out_png is not None else []
    if as_json:
        plot = None if out_png is None else str(out_png)
        return json.dumps(comparison_document(comparison, plot, skipped), indent=2)
    lines = [format_tables(comparison)]
    if out_png is not None:
        lines.append(f"validation curves: {out_png}")
    if skipped:
        lines.append(f"no val_loss logged yet, so not in the plot: {', '.join(skipped)}")
    return "\n".join(lines)
