"""The spectral monitor: every hidden matrix's singular values, MCN and GMCN at an interval of steps.

The analysis reads weights only (no forward pass). Hidden matrices are stacked by shape; each rank
computes the singular values (and, for PC layers, the power-iteration estimate sigma) of its contiguous
slice of each stack from whole matrices, gathered where the engine shards them, and the slices are then
shared, so every rank holds every value. The main process builds the
:class:`~pcpretrain.spectra.analysis.SpectraReport`: its ``spectral/*`` metrics join the step's record
and its record is appended to ``spectra.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pcpretrain.compat import plain_parameter_name
from pcpretrain.pc import PCLinear
from pcpretrain.pc.groups import full_shape, stack_buffers
from pcpretrain.pc.spectral import spectral_norm_estimate
from pcpretrain.sharding import broadcast_slices, full_stack, rank_and_world, slice_bounds
from pcpretrain.spectra.analysis import METRIC_PREFIX, SpectraReport, matrix_spectra, singular_values
from pcpretrain.spectra.measures import hidden_matrix
from pcpretrain.train.callbacks.base import Callback, Histogram
from pcpretrain.train.callbacks.metrics_file import truncate_after

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer

SOURCE = "training"
# The pooled sigma / sigma_1 histograms handed to trackers, by whether the matrices are PC layers.
HISTOGRAM_METRICS = {True: METRIC_PREFIX + "sigma_ratio_pc", False: METRIC_PREFIX + "sigma_ratio_no_pc"}


@dataclass
class MatrixGroup:
    """Hidden matrices of one shape and dtype, all PC layers of one degree or all plain, in model order."""

    pc: bool
    degree: int
    names: list[str] = field(default_factory=list)
    modules: list[nn.Linear] = field(default_factory=list)


def hidden_groups(model: nn.Module) -> list[MatrixGroup]:
    """The hidden matrices (q/k/v/o/gate/up/down) of the unwrapped ``model``, grouped for stacking."""
    groups: dict[tuple, MatrixGroup] = {}
    for name, module in model.named_modules():
        weight_name = plain_parameter_name(f"{name}.weight")
        if hidden_matrix(weight_name) is None:
            continue
        pc = isinstance(module, PCLinear)
        degree = module.degree if pc else 0
        key = (full_shape(module.weight), module.weight.dtype, pc, degree)
        group = groups.setdefault(key, MatrixGroup(pc, degree))
        group.names.append(weight_name)
        group.modules.append(module)
    return list(groups.values())


@torch.no_grad()
def group_values(group: MatrixGroup) -> Tensor:
    """``(B, r)`` singular values of the group's matrices (descending), with one more column for PC
    layers: the estimate sigma = u^T W v their transform divides by. Collective: every rank computes
    its slice, then every rank holds all rows."""
    rank, world = rank_and_world()
    bounds = slice_bounds(len(group.modules), world)
    start, end = bounds[rank]
    weights = full_stack([module.weight for module in group.modules], start, end)
    own = singular_values(weights)  # no rows where this rank's slice is empty
    values = own.new_empty((len(group.modules), own.shape[-1] + int(group.pc)))
    values[start:end, : own.shape[-1]] = own
    if group.pc and end > start:
        u, v = (stack_buffers(group.modules[start:end], name) for name in ("pc_u", "pc_v"))
        values[start:end, -1] = spectral_norm_estimate(weights.to(u.dtype), u, v)
    del weights
    broadcast_slices(values, bounds)
    return values


def spectra_report(
    groups: list[MatrixGroup], values: list[Tensor], *, step: int | None, source: str
) -> SpectraReport:
    """The report of every group from its :func:`group_values`."""
    matrices = []
    for group, group_vals in zip(groups, values, strict=True):
        if group.pc:
            sigma = group_vals[:, -1]
            matrices += matrix_spectra(group.names, group_vals[:, :-1], pc_sigma=sigma, degree=group.degree)
        else:
            matrices += matrix_spectra(group.names, group_vals)
    return SpectraReport(step, matrices, source=source)


def model_spectra(model: nn.Module, *, step: int | None = None, source: str = SOURCE) -> SpectraReport | None:
    """Spectra of every hidden matrix of the unwrapped ``model``: the report on rank 0, None elsewhere.

    Collective under several processes (every rank must call it); in one process it is the whole
    computation, which is what ``scripts/bench_spectra.py`` times.
    """
    groups = hidden_groups(model)
    values = [group_values(group) for group in groups]
    if rank_and_world()[0] != 0:
        return None
    return spectra_report(groups, values, step=step, source=source)


def histogram_metrics(report: SpectraReport) -> dict[str, Histogram]:
    """The pooled sigma / sigma_1 histograms of the PC layers and of the others (groups with matrices)."""
    return {
        key: Histogram(report.histogram(pc=pc), 0.0, 1.0)
        for pc, key in HISTOGRAM_METRICS.items()
        if any(matrix.pc == pc for matrix in report.matrices)
    }


class SpectralMonitor(Callback):
    """Analyses the weights every ``every`` steps (0: never at an interval) and, with ``at_end``, at the
    schedule's last step; on (re)start drops ``spectra.jsonl`` records past the step it continues from.

    Every rank runs it at the same steps (it is collective); steps it skips cost nothing.
    """

    def __init__(self, path: Path, every: int, at_end: bool = True) -> None:
        self.path = path
        self.every = every
        self.at_end = at_end

    def due(self, trainer: Trainer) -> bool:
        step = trainer.state.step
        return (self.every > 0 and step % self.every == 0) or (self.at_end and trainer.schedule_finished)

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.accelerator.is_main_process:
            truncate_after(self.path, trainer.state.step)

    def needs_step_values(self, trainer: Trainer) -> bool:
        """A due step is logged (its record then carries the loss like any other); the analysis waits
        for the device on that step anyway, so reading the values costs no extra wait."""
        return self.due(trainer)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if not self.due(trainer):
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        report = model_spectra(model, step=trainer.state.step)
        if report is None:  # not the main process
            return
        metrics.update(report.metrics())
        metrics.update(histogram_metrics(report))
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(report.record()) + "\n")
