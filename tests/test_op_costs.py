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
    c, stack_c, v = (
        torch.zeros(3, 7, device=device),
        torch.zeros(2, 3, 7, device=device),
        torch.ones(5, device=device),
    )
    with OpCosts() as costs:
        _ = a @ b
        torch.addmm(c, a, b)
        torch.baddbmm(stack_c, stack_a, stack_b)
        torch.mv(a, v)
    assert costs.flops == 2 * (3 * 5 * 7 + 3 * 5 * 7 + 2 * 3 * 5 * 7 + 3 * 5)
    assert costs.other_bytes == 0


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
