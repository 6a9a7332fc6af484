"""MCN, GMCN, the PC singular-value map and the ratio histogram against closed forms in float64."""

from __future__ import annotations

import math

import pytest
import torch

from pcpretrain.pc import precondition
from pcpretrain.spectra.measures import (
    HiddenMatrix,
    gmcn,
    hidden_matrix,
    mcn,
    pc_singular_values,
    ratio_histogram,
)


def with_singular_values(values: torch.Tensor, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """U diag(values) V^T in float64 with orthonormal U (rows x r) and V (cols x r) from QR."""
    generator = torch.Generator().manual_seed(seed)
    rank = values.numel()
    u = torch.linalg.qr(torch.randn(rows, rank, generator=generator, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, rank, generator=generator, dtype=torch.float64)).Q
    return u @ torch.diag(values.double()) @ v.T


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.3.self_attn.q_proj.weight", HiddenMatrix(3, "q_proj")),
        ("model.layers.0.self_attn.o_proj.weight", HiddenMatrix(0, "o_proj")),
        ("model.layers.12.mlp.down_proj.weight", HiddenMatrix(12, "down_proj")),
        ("_orig_mod.model.layers.1._orig_mod.mlp.gate_proj.weight", HiddenMatrix(1, "gate_proj")),
        ("model.embed_tokens.weight", None),
        ("lm_head.weight", None),
        ("model.layers.2.mlp.up_proj.pc_u", None),
        ("model.layers.2.input_layernorm.weight", None),
    ],
)
def test_hidden_matrix_parses_decoder_matrices_and_rejects_the_rest(
    name: str, expected: HiddenMatrix | None
) -> None:
    assert hidden_matrix(name) == expected


@pytest.mark.parametrize(("rank", "smallest"), [(5, 1), (10, 1), (11, 2), (64, 7)])
def test_mcn_divides_sigma_1_by_the_mean_of_the_smallest_ceil_ten_percent(rank: int, smallest: int) -> None:
    values = torch.linspace(3.0, 0.1, rank, dtype=torch.float64)
    weight = with_singular_values(values, rank + 5, rank)
    expected = values[0] / values[-smallest:].mean()
    assert mcn(torch.linalg.svdvals(weight)).item() == pytest.approx(expected.item(), rel=1e-10)
    shuffled = values[torch.randperm(rank, generator=torch.Generator().manual_seed(1))]
    assert mcn(shuffled).item() == pytest.approx(expected.item(), rel=1e-12)


def test_mcn_of_a_stack_is_per_matrix() -> None:
    stack = torch.tensor([[4.0, 2.0, 1.0], [9.0, 3.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(mcn(stack), torch.tensor([4.0, 3.0], dtype=torch.float64))


def test_gmcn_is_the_geometric_mean_and_infinite_for_a_singular_matrix() -> None:
    mcns = [2.0, 8.0, 4.0]
    assert gmcn(mcns) == pytest.approx(4.0, rel=1e-12)
    assert gmcn([]) is None
    assert gmcn([2.0, math.inf]) == math.inf
    assert gmcn([2.0, 0.0]) == math.inf


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
@pytest.mark.parametrize(("rows", "cols"), [(24, 10), (10, 24), (16, 16)])
def test_pc_singular_values_equal_those_of_the_transform_without_gamma(
    degree: int, rows: int, cols: int
) -> None:
    rank = min(rows, cols)
    values = torch.linspace(1.0, 0.02, rank, dtype=torch.float64) ** 2 * 0.7
    weight = with_singular_values(values, rows, cols, seed=degree)
    # An estimate a little below sigma_1, as a warm power iteration gives: x = s / sigma exceeds 1.
    sigma = torch.tensor(0.95 * values[0].item() + 1e-7, dtype=torch.float64)
    expected = torch.linalg.svdvals(precondition(weight, degree, sigma))
    got = pc_singular_values(torch.linalg.svdvals(weight).unsqueeze(0), sigma.reshape(1), degree)[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_pc_singular_values_of_degree_zero_are_the_raw_ones() -> None:
    values = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    assert pc_singular_values(values, torch.tensor([3.0]), 0) is values


def test_ratio_histogram_counts_sigma_over_sigma_1_in_equal_bins() -> None:
    assert ratio_histogram(torch.tensor([0.0, 2.0, 0.5, 1.0]), bins=4) == [1, 1, 1, 1]
    assert ratio_histogram(torch.tensor([[4.0, 4.0, 1.0], [2.0, 0.2, 0.1]]), bins=2) == [3, 3]
    default = ratio_histogram(torch.rand(37, dtype=torch.float64))
    assert len(default) == 50 and sum(default) == 37
