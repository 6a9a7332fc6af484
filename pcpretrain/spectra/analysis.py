"""Singular values of stacks of same-shaped matrices, and the records built from them.

A :class:`SpectraReport` is what one analysis of a model yields: per hidden matrix its sigma_1, MCN,
histogram of sigma / sigma_1 and, for PC layers, the power-iteration estimate's relative error; plus
GMCN over all matrices and over the ``pc`` and ``no_pc`` groups. Training writes
:meth:`SpectraReport.metrics` to ``metrics.jsonl`` and :meth:`SpectraReport.record` to ``spectra.jsonl``;
the offline command writes the same records and reads them back with :meth:`SpectraReport.from_record`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from pcpretrain.pc.precision import autocast_off
from pcpretrain.spectra.measures import (
    HIDDEN_KINDS,
    HISTOGRAM_BINS,
    gmcn,
    hidden_matrix,
    mcn,
    pc_singular_values,
    ratio_histogram,
)

METRIC_PREFIX = "spectral/"


@dataclass(frozen=True)
class MatrixSpectrum:
    """One hidden matrix's spectrum, reduced to what is logged."""

    name: str
    layer: int
    kind: str
    pc: bool
    sigma_1: float
    mcn: float
    # PC layers: |u^T W v - sigma_1(W)| / sigma_1(W) of the raw weight; None elsewhere and from merged models.
    estimate_rel_error: float | None
    histogram: list[int]


@torch.no_grad()
def singular_values(stack: Tensor) -> Tensor:
    """Singular values of each matrix of ``stack`` (``(B, m, n)``), in float32 or better, descending."""
    with autocast_off(stack.device.type):
        dtype = torch.float64 if stack.dtype == torch.float64 else torch.float32
        return torch.linalg.svdvals(stack.to(dtype))


def matrix_spectra(
    names: Sequence[str],
    raw_singular_values: Tensor,
    *,
    pc_sigma: Tensor | None = None,
    degree: int = 0,
    merged: bool = False,
) -> list[MatrixSpectrum]:
    """Records of same-shaped matrices from their raw weights' singular values (``(B, r)``).

    PC layers (``pc_sigma`` given: their power-iteration estimates, ``(B,)``) are described by the
    transform without gamma, whose singular values follow from the raw ones in closed form
    (:func:`pc_singular_values`). ``merged``: the singular values already are the transform's (a merged
    model, ``pc_sigma`` then ignored for the map); the matrices are still marked ``pc``.
    """
    raw = raw_singular_values.double().cpu()
    is_pc = pc_sigma is not None or merged
    if pc_sigma is not None and not merged:
        sigma = pc_sigma.double().cpu()
        values = pc_singular_values(raw, sigma, degree)
        errors: list[float | None] = ((sigma - raw[:, 0]).abs() / raw[:, 0]).tolist()
    else:
        values = raw
        errors = [None] * len(names)
    mcns = mcn(values).tolist()
    records = []
    for index, name in enumerate(names):
        where = hidden_matrix(name)
        if where is None:
            raise ValueError(f"{name!r} is not a hidden matrix of a decoder layer (q/k/v/o/gate/up/down)")
        records.append(
            MatrixSpectrum(
                name=name,
                layer=where.layer,
                kind=where.kind,
                pc=is_pc,
                sigma_1=float(values[index, 0]),
                mcn=float(mcns[index]),
                estimate_rel_error=errors[index],
                histogram=ratio_histogram(values[index]),
            )
        )
    return records


@dataclass
class SpectraReport:
    """All hidden matrices of one model at one step, in model order."""

    step: int | None
    matrices: list[MatrixSpectrum]
    source: str = ""
    bins: int = HISTOGRAM_BINS
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.matrices = sorted(self.matrices, key=lambda m: (m.layer, _kind_order(m.kind)))

    def gmcn(self, pc: bool | None = None) -> float | None:
        """GMCN over every matrix (``pc=None``), the PC layers (True) or the others (False)."""
        return gmcn([m.mcn for m in self.matrices if pc is None or m.pc == pc])

    def histogram(self, pc: bool | None = None) -> list[int]:
        """The pooled sigma / sigma_1 counts of every matrix, the PC layers or the others."""
        counts = [0] * self.bins
        for matrix in self.matrices:
            if pc is None or matrix.pc == pc:
                counts = [a + b for a, b in zip(counts, matrix.histogram, strict=True)]
        return counts

    def summary(self) -> dict[str, float | int | None]:
        """The compact figures: GMCN (all, pc, no_pc), the largest sigma_1, the estimate's error."""
        errors = [m.estimate_rel_error for m in self.matrices if m.estimate_rel_error is not None]
        return {
            "gmcn": self.gmcn(),
            "gmcn_pc": self.gmcn(pc=True),
            "gmcn_no_pc": self.gmcn(pc=False),
            "sigma_1_max": max((m.sigma_1 for m in self.matrices), default=None),
            "estimate_rel_error_max": max(errors) if errors else None,
            "estimate_rel_error_mean": math.fsum(errors) / len(errors) if errors else None,
            "matrices": len(self.matrices),
        }

    def metrics(self) -> dict[str, float | int]:
        """The summary as ``spectral/*`` scalars for ``metrics.jsonl`` and wandb (absent values left out)."""
        return {METRIC_PREFIX + key: value for key, value in self.summary().items() if value is not None}

    def record(self) -> dict[str, Any]:
        """One line of ``spectra.jsonl``: step, source, summary and every matrix's values."""
        return {
            "step": self.step,
            "source": self.source,
            **self.extra,
            "summary": self.summary(),
            "bins": self.bins,
            "matrices": [asdict(m) for m in self.matrices],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SpectraReport:
        """The report a :meth:`record` line describes."""
        known = {"step", "source", "summary", "bins", "matrices"}
        return cls(
            step=record.get("step"),
            matrices=[MatrixSpectrum(**m) for m in record["matrices"]],
            source=record.get("source", ""),
            bins=record.get("bins", HISTOGRAM_BINS),
            extra={k: v for k, v in record.items() if k not in known},
        )


def _kind_order(kind: str) -> int:
    return HIDDEN_KINDS.index(kind)
