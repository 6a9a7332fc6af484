"""``pcpretrain spectra``: weight spectra (MCN, GMCN, sigma / sigma_1) of checkpoints, offline on CPU.

Each checkpoint is read one decoder layer at a time, whatever wrote it (unmerged checkpoints of any
engine, merged exports, any Hugging Face Llama), and described by the same records training's spectral
monitor writes (:mod:`pcpretrain.spectra.analysis`), so the numbers of both agree. Which checkpoints a
set of paths names: :mod:`pcpretrain.analysis.checkpoint_sources`; the figures:
:mod:`pcpretrain.analysis.spectra_plots`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from pcpretrain import checkpoint as ckpt
from pcpretrain.analysis import text_table
from pcpretrain.analysis.checkpoint_sources import UNMERGED, Checkpoint, ModelDirWeights, find_checkpoints
from pcpretrain.checkpoint_weights import CheckpointWeights, layer_groups, open_weights
from pcpretrain.compat import plain_parameter_name
from pcpretrain.config import load_yaml
from pcpretrain.export import read_merged_info
from pcpretrain.files import atomic_write_text
from pcpretrain.pc import pc_layer_scales
from pcpretrain.pc.layers import PC_SUFFIXES
from pcpretrain.spectra.analysis import MatrixSpectrum, SpectraReport, matrix_spectra, singular_values
from pcpretrain.spectra.measures import hidden_matrix

RECORDS_FILE = "spectra.jsonl"

log = logging.getLogger(__name__)


def layer_spectra(
    weights: Mapping[str, Tensor],
    pc_scales: Mapping[str, Mapping[str, float]],
    degree: int,
    merged: bool,
) -> list[MatrixSpectrum]:
    """Spectra of one layer's hidden matrices (name -> weight), with one svdvals call per shape.

    ``pc_scales`` holds gamma and sigma of each PC layer by module name (what
    :func:`pcpretrain.pc.pc_layer_scales` gives and a merged ``pcpretrain.json`` keeps). A raw PC weight
    maps to the transform's spectrum through sigma; a merged one is gamma times the transform, so its
    singular values are divided by |gamma|.
    """
    shapes: dict[tuple[int, ...], list[str]] = {}
    for name, weight in weights.items():
        shapes.setdefault(tuple(weight.shape), []).append(name)
    spectra: list[MatrixSpectrum] = []
    for names in shapes.values():
        values = singular_values(torch.stack([weights[name] for name in names])).double()
        modules = [name.removesuffix(".weight") for name in names]
        plain = [i for i, module in enumerate(modules) if module not in pc_scales]
        if plain:
            spectra += matrix_spectra([names[i] for i in plain], values[plain])
        rows = [i for i, module in enumerate(modules) if module in pc_scales]
        if not rows:
            continue
        scales = [pc_scales[modules[i]] for i in rows]
        if merged:
            gamma = torch.tensor([abs(scale["gamma"]) for scale in scales], dtype=torch.float64)
            spectra += matrix_spectra([names[i] for i in rows], values[rows] / gamma[:, None], merged=True)
        else:
            sigma = torch.tensor([scale["sigma"] for scale in scales], dtype=torch.float64)
            spectra += matrix_spectra([names[i] for i in rows], values[rows], pc_sigma=sigma, degree=degree)
    return spectra


def model_spectra(
    weights: CheckpointWeights, degree: int, merged_scales: Mapping[str, Mapping[str, float]] | None = None
) -> list[MatrixSpectrum]:
    """Spectra of every hidden matrix, loading one decoder layer at a time, named as in a plain Llama.
    Raw (unmerged) weights give each PC layer's gamma and sigma from its own tensors; a merged model
    needs ``merged_scales``."""
    spectra: list[MatrixSpectrum] = []
    for group in layer_groups(weights.names()):
        hidden = [name for name in group if hidden_matrix(name) is not None]
        if not hidden:
            continue
        if merged_scales is None:
            buffers = [name for name in group if name.rpartition(".")[2] in PC_SUFFIXES]
            tensors = weights.load(hidden + buffers)
            raw_scales = pc_layer_scales(tensors)
            scales: Mapping[str, Mapping[str, float]] = {
                plain_parameter_name(m): s for m, s in raw_scales.items()
            }
        else:
            tensors, scales = weights.load(hidden), merged_scales
        hidden_weights = {plain_parameter_name(name): tensors[name] for name in hidden}
        spectra += layer_spectra(hidden_weights, scales, degree, merged=merged_scales is not None)
    return spectra


def analyse(checkpoint: Checkpoint) -> SpectraReport:
    """The spectra of one checkpoint; an unmerged one is verified first, as for an export. A model
    directory without ``pcpretrain.json`` (a Llama from elsewhere) has no PC layers to tell apart: all its
    matrices count as ``no_pc``."""
    path = checkpoint.path
    log.info("analysing %s", path)
    if checkpoint.form == UNMERGED:
        ckpt.verify_checkpoint(path)
        step = int(ckpt.read_trainer_state(path)["step"])
        spectra = model_spectra(open_weights(path), load_yaml(path / ckpt.CONFIG).pc.degree)
    else:
        info = read_merged_info(path)
        step = info.get("step")
        spectra = model_spectra(ModelDirWeights(path), info.get("pc_degree", 0), info.get("pc_layers", {}))
    if not spectra:
        raise ValueError(f"{path}: holds no hidden matrices of Llama decoder layers (model.layers.N...)")
    extra = {"run": checkpoint.run, "form": checkpoint.form}
    return SpectraReport(step=step, matrices=spectra, source=str(path), extra=extra)


def write_records(reports: Sequence[SpectraReport], path: Path) -> Path:
    """``spectra.jsonl``: one :meth:`SpectraReport.record` per checkpoint, replaced as a whole."""
    atomic_write_text(path, "".join(json.dumps(report.record()) + "\n" for report in reports))
    return path


def read_records(path: Path) -> list[SpectraReport]:
    """The reports a ``spectra.jsonl`` holds (the offline command's or training's)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [SpectraReport.from_record(json.loads(line)) for line in lines if line.strip()]


def format_table(reports: Sequence[SpectraReport]) -> str:
    """One line per checkpoint: run, step, form, GMCN (all, PC layers, others), largest estimate error."""
    header = ["run", "step", "form", "GMCN", "GMCN pc", "GMCN no_pc", "max est. error"]
    rows = []
    for report in reports:
        summary = report.summary()
        rows.append(
            [
                str(report.extra.get("run", "")),
                "-" if report.step is None else str(report.step),
                str(report.extra.get("form", "")),
                *(_number(summary[key], "{:.4g}") for key in ("gmcn", "gmcn_pc", "gmcn_no_pc")),
                _number(summary["estimate_rel_error_max"], "{:.2e}"),
            ]
        )
    return text_table(header, rows, right=[False, True, False, True, True, True, True])


def _number(value: float | int | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def spectra_report(paths: Sequence[Path], out_dir: Path, plots: bool = True) -> str:
    """Analyse every checkpoint under ``paths``, write ``spectra.jsonl`` (and the figures) to ``out_dir``;
    the table and where things went, as text."""
    reports = [analyse(checkpoint) for checkpoint in find_checkpoints(paths)]
    lines = [format_table(reports), f"records: {write_records(reports, Path(out_dir) / RECORDS_FILE)}"]
    if plots:
        from pcpretrain.analysis.spectra_plots import plot_spectra

        lines += [f"figure: {png}" for png in plot_spectra(reports, Path(out_dir))]
    return "\n".join(lines)
