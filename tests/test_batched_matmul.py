"""Products with a symmetric result computed in strips equal the whole products, in float64."""

from __future__ import annotations

import pytest
import torch

from pcpretrain.batched_matmul import (
    MAX_STRIPS,
    MIN_STRIP_ROWS,
    set_symmetric_strips,
    strip_bounds,
    symmetric_flop_fraction,
    symmetric_matmul,
    symmetric_strips,
)
from pcpretrain.op_costs import OpCosts


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def sym(*shape: int, seed: int) -> torch.Tensor:
    a = rand(*shape, seed=seed)
    return a + a.mT


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
@pytest.mark.parametrize("n", [13, 16])
@pytest.mark.parametrize("strips", [2, 3, 4])
def test_gram_matrices_in_strips_equal_whole_products(lead, n, strips) -> None:
    tall, wide = rand(*lead, 40, n, seed=1), rand(*lead, n, 40, seed=2)
    with symmetric_strips(strips, min_rows=2):
        assert len(strip_bounds(n)) == strips + 1
        got_tall, got_wide = symmetric_matmul([(tall.mT, tall)]), symmetric_matmul([(wide, wide.mT)])
    torch.testing.assert_close(got_tall, tall.mT @ tall, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(got_wide, wide @ wide.mT, rtol=1e-13, atol=1e-12)
    assert got_tall.shape == (*lead, n, n) and got_tall.is_contiguous()


@pytest.mark.parametrize("lead", [(), (3,)])
def test_scaled_sums_of_products_with_a_symmetric_total_equal_whole_products(lead) -> None:
    """beta C + alpha (A B + B A) for symmetric A, B, C: neither product is symmetric, their sum is."""
    a, b, c = sym(*lead, 13, 13, seed=3), sym(*lead, 13, 13, seed=4), sym(*lead, 13, 13, seed=5)
    expected = 0.3 * c - 2.0 * (a @ b + b @ a)
    with symmetric_strips(4, min_rows=3):
        bounds = strip_bounds(13)
        got = symmetric_matmul([(a, b), (b, a)], c, beta=0.3, alpha=-2.0)
        scaled = symmetric_matmul([(a, a)], alpha=0.5)
    assert bounds == [0, 3, 6, 10, 13]
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(scaled, 0.5 * (a @ a), rtol=1e-13, atol=1e-12)
    # Each strip's part below the diagonal is the transpose of the column above it.
    for start in bounds[1:-1]:
        assert torch.equal(got[..., start:, :start], got[..., :start, start:].mT)


def test_strips_do_the_flops_of_the_blocks_on_and_above_the_diagonal() -> None:
    x = torch.empty(5, 4096, 2048, device="meta")
    with OpCosts() as whole:
        symmetric_matmul([(x.mT, x)])
    with symmetric_strips(1), OpCosts() as plain:
        symmetric_matmul([(x.mT, x)])
    assert plain.flops == 2 * 5 * 4096 * 2048 * 2048
    assert symmetric_flop_fraction(2048) == (MAX_STRIPS + 1) / (2 * MAX_STRIPS) == 5 / 8
    assert whole.flops == plain.flops * 5 / 8
    # The copies of the 6 blocks below the diagonal: read once, written once.
    assert whole.other_bytes == 2 * 5 * 6 * 512 * 512 * 4


def test_small_results_and_autograd_use_whole_products() -> None:
    assert strip_bounds(MIN_STRIP_ROWS * 2 - 1) == [0, MIN_STRIP_ROWS * 2 - 1]
    assert strip_bounds(MIN_STRIP_ROWS * 2) == [0, MIN_STRIP_ROWS, MIN_STRIP_ROWS * 2]
    assert symmetric_flop_fraction(100) == 1.0
    x = rand(40, 12, seed=6).requires_grad_()
    with symmetric_strips(4, min_rows=2):
        gram = symmetric_matmul([(x.mT, x)])
        gram.sum().backward()
    reference = x.detach().clone().requires_grad_()
    (reference.mT @ reference).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad, rtol=0, atol=0)
    a, c = sym(12, 12, seed=7), sym(12, 12, seed=8)
    with symmetric_strips(1):
        torch.testing.assert_close(symmetric_matmul([(a, a)], alpha=0.5), 0.5 * (a @ a))
        torch.testing.assert_close(
            symmetric_matmul([(a, c), (c, a)], c, beta=2.0, alpha=-1.0), 2 * c - (a @ c + c @ a)
        )


def test_the_strip_setting_is_restored_and_checked() -> None:
    with symmetric_strips(2, min_rows=8):
        assert strip_bounds(64) == [0, 32, 64]
    assert strip_bounds(2048) == [0, 512, 1024, 1536, 2048]
    previous = set_symmetric_strips(1)
    try:
        assert previous == (MAX_STRIPS, MIN_STRIP_ROWS) and strip_bounds(2048) == [0, 2048]
    finally:
        set_symmetric_strips(*previous)
    with pytest.raises(ValueError, match="max_strips and min_rows must be >= 1, got 0"):
        set_symmetric_strips(0)


def test_strips_in_bfloat16_match_whole_products_to_its_rounding() -> None:
    """As Newton-Schulz runs them: bf16 operands, float32 accumulation in both."""
    x = (rand(2, 24, 64, seed=9) / 8).bfloat16()
    with symmetric_strips(4, min_rows=8):
        gram = symmetric_matmul([(x, x.mT)])
        square = symmetric_matmul([(gram, gram)], gram, beta=-4.775, alpha=2.0315)
    whole_gram = (x @ x.mT).double()
    whole_square = -4.775 * whole_gram + 2.0315 * (gram.double() @ gram.double())
    assert gram.dtype == square.dtype == torch.bfloat16
    torch.testing.assert_close(gram.double(), whole_gram, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(square.double(), whole_square, rtol=1e-2, atol=1e-2)
