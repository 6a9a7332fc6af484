"""Matrix products with their scaling and sum in the GEMM's epilogue, for a matrix or a stack.

An elementwise pass over the operands of the PC transform or of Newton-Schulz costs a noticeable
fraction of a product at the 1B shapes, so the two hot paths fold ``beta * c + alpha * (a @ b)`` into
the product itself (``addmm`` / ``baddbmm``) instead of scaling and adding on their own.
"""

from __future__ import annotations

import torch
from torch import Tensor


def scaled_matmul_add(c: Tensor, a: Tensor, b: Tensor, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
    """``beta * c + alpha * (a @ b)`` as one product, for a matrix or any stack (leading dimensions
    flattened into one batch)."""
    if c.ndim == 2:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    lead = c.shape[:-2]
    out = torch.baddbmm(
        c.reshape(-1, *c.shape[-2:]),
        a.reshape(-1, *a.shape[-2:]),
        b.reshape(-1, *b.shape[-2:]),
        beta=beta,
        alpha=alpha,
    )
    return out.reshape(*lead, *out.shape[-2:])


def add_matmul_(out: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``out += alpha * (a @ b)`` in place, for a matrix or a stack of them (no temporary for the product)."""
    return out.addmm_(a, b, alpha=alpha) if out.ndim == 2 else out.baddbmm_(a, b, alpha=alpha)
