"""The precision rules of the PC transform: which dtype its products with the large matrices use."""

from __future__ import annotations

import pytest
import torch

from pcpretrain.pc.precision import product_dtype


@pytest.mark.parametrize(
    ("requested", "forward", "expected"),
    [
        (None, torch.bfloat16, torch.bfloat16),  # the default follows a bf16 forward
        (None, None, None),  # float32 training keeps float32 products
        (None, torch.float16, None),  # fp16 autocast: bf16 products would not be its rounding
        (True, None, torch.bfloat16),
        (False, torch.bfloat16, None),
    ],
)
def test_bf16_products_follow_a_bf16_forward_unless_set(requested, forward, expected) -> None:
    assert product_dtype(requested, forward) == expected
