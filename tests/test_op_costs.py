"""The op counter against costs worked out by hand, on real and on meta tensors."""

from __future__ import annotations

import pytest
import torch

from pcpretrain.op_costs import OpCosts

FLOAT = 4  # bytes per float32 element


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_products_count_two_flops_per_multiply_add_and_no_bytes(device: str) -> None:
    a, b = torch.ones(3, 5, device=device), torch.ones(5, 7, device=device)
    stack_a, stack_b = torch.ones(2, 3, 5, device=device), torch.ones(2, 5, 7, device=device)
    c, stack_c = torch.zeros(3, 7, device=device), torch.zeros(2, 3, 7, device=device)
    with OpCosts() as costs:
        _ = a @ b
        torch.addmm(c, a, b)
        torch.baddbmm(stack_c, stack_a, stack_b)
    assert costs.flops == 2 * (3 * 5 * 7 + 3 * 5 * 7 + 2 * 3 * 5 * 7)
    assert costs.other_bytes == 0


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_products_with_a_dimension_of_one_also_count_their_bytes(device: str) -> None:
    """Matrix-vector, outer and dot products (also per matrix of a stack) are bandwidth-bound."""
    a, v = torch.ones(3, 5, device=device), torch.ones(5, device=device)
    stack, column = torch.ones(2, 3, 5, device=device), torch.ones(2, 5, 1, device=device)
    rows, out = torch.ones(2, 1, 15, device=device), torch.zeros(2, 3, 5, device=device)
    left, right = torch.ones(2, 3, 1, device=device), torch.ones(2, 1, 5, device=device)
    with OpCosts() as costs:
        torch.mv(a, v)  # reads 15 + 5, writes 3
        torch.dot(v, v)  # reads 5 + 5, writes 1
        _ = stack @ column  # a stack of matrix-vector products: reads 30 + 10, writes 6
        _ = rows @ rows.mT  # a stack of dot products: reads 30 + 30, writes 2
        out.baddbmm_(left, right)  # rank one: K = 1
    assert costs.flops == 2 * (15 + 5 + 30 + 30 + 30)
    rank_one = 30 + 6 + 10 + 30  # out read, the two factors read, out written
    assert costs.other_bytes == FLOAT * (23 + 11 + 46 + 62 + rank_one)


def test_elementwise_ops_count_what_they_read_and_write() -> None:
    x, y = torch.ones(10), torch.ones(10)
    with OpCosts() as costs:
        _ = x + y
    assert costs.other_bytes == 3 * 10 * FLOAT
    with OpCosts() as costs:
        x.add_(y)
    assert costs.other_bytes == 3 * 10 * FLOAT
    with OpCosts() as costs:
        torch.div(x, y, out=torch.empty(10, dtype=torch.bfloat16))
    assert costs.other_bytes == (2 * 10 * FLOAT) + 10 * 2


def test_multi_tensor_in_place_ops_count_their_writes() -> None:
    xs, ys = [torch.ones(4), torch.ones(6)], [torch.ones(4), torch.ones(6)]
    with OpCosts() as costs:
        torch._foreach_add_(xs, ys)
        torch._foreach_mul_(xs, 0.5)
    assert costs.other_bytes == (3 + 2) * 10 * FLOAT
    assert costs.bytes_by_op == {"_foreach_add_": 3 * 10 * FLOAT, "_foreach_mul_": 2 * 10 * FLOAT}


def test_views_and_allocations_move_nothing_and_copies_only_write_their_target() -> None:
    x = torch.ones(4, 6)
    with OpCosts() as costs:
        x.view(6, 4).mT.unsqueeze(0)
        torch.empty_like(x).copy_(x)
        torch.empty(3).zero_()
        torch.zeros_like(x, dtype=torch.bfloat16)
    assert costs.other_bytes == 2 * 24 * FLOAT + 3 * FLOAT + 24 * 2
