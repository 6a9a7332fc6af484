"""Which matrices a spectrum analysis covers, and the condition numbers computed from singular values.

MCN (a matrix's condition number robust to a few tiny singular values) is sigma_1 divided by the mean
of the smallest ceil(10%) singular values; GMCN is the geometric mean of the MCNs of a set of
matrices, the paper's summary of how well conditioned a model's weights are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pcpretrain.compat import plain_parameter_name
from pcpretrain.pc.polynomial import PC_COEFFICIENTS, check_degree

# The hidden matrices of a Llama decoder layer; embeddings and the LM head are left out.
HIDDEN_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_HIDDEN = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(" + "|".join(HIDDEN_KINDS) + r")\.weight$")
# The share of the smallest singular values whose mean is MCN's denominator.
SMALLEST_SHARE = 0.1
# Bins of the sigma / sigma_1 histograms over [0, 1].
HISTOGRAM_BINS = 50


@dataclass(frozen=True)
class HiddenMatrix:
    """Where a hidden matrix sits: its decoder layer and its kind (``q_proj`` ... ``down_proj``)."""

    layer: int
    kind: str


def hidden_matrix(name: str) -> HiddenMatrix | None:
    """The layer and kind of a state-dict name like ``model.layers.3.mlp.up_proj.weight``; None for any
    other tensor (embeddings, head, norms, PC buffers)."""
    match = _HIDDEN.search(plain_parameter_name(name))
    return HiddenMatrix(int(match.group(1)), match.group(2)) if match else None


def mcn(singular_values: Tensor) -> Tensor:
    """MCN of each matrix from its singular values (``(..., r)``, any order): sigma_1 over the mean of
    the smallest ceil(10% of r)."""
    ordered = singular_values.sort(dim=-1, descending=True).values
    smallest = math.ceil(SMALLEST_SHARE * ordered.shape[-1])
    return ordered[..., 0] / ordered[..., -smallest:].mean(dim=-1)


def gmcn(mcns: Sequence[float]) -> float | None:
    """The geometric mean of MCNs (None for none); infinite when any matrix is singular."""
    if not mcns:
        return None
    if any(value == math.inf or value <= 0 for value in mcns):
        return math.inf
    return math.exp(math.fsum(math.log(value) for value in mcns) / len(mcns))


def pc_singular_values(singular_values: Tensor, sigma: Tensor, degree: int) -> Tensor:
    """Singular values of the PC transform without gamma, sigma * X q_k(X^T X) with X = W / sigma, from
    those of W: each s maps to sigma * |x q_k(x^2)| with x = s / sigma (X q(X^T X) shares X's singular
    vectors). Sorted in descending order. ``sigma`` is the power-iteration estimate, one per matrix."""
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    if coeffs is None:
        return singular_values
    scale = sigma.unsqueeze(-1)
    x = singular_values / scale
    x2 = x * x
    q = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        q = q * x2 + c
    return (scale * (x * q).abs()).sort(dim=-1, descending=True).values


def ratio_histogram(singular_values: Tensor, bins: int = HISTOGRAM_BINS) -> list[int]:
    """Counts of sigma / sigma_1 over ``bins`` equal bins of [0, 1] (all matrices of the input pooled)."""
    ordered = singular_values.sort(dim=-1, descending=True).values.double()
    ratios = (ordered / ordered[..., :1]).flatten().clamp(0.0, 1.0)
    return [int(c) for c in torch.histc(ratios, bins=bins, min=0.0, max=1.0).tolist()]
