"""Independent float64 references for the PC transform, shared by the PC test modules."""

from __future__ import annotations

import torch

# Written out again on purpose: the reference must not share the implementation's table.
REF_COEFFS = {
    0: (1.0,),
    1: (1.507, -0.507),
    2: (2.083, -1.643, 0.560),
    3: (2.909, -4.649, 4.023, -1.283),
    4: (3.625, -9.261, 14.097, -10.351, 2.890),
}
SHAPES = [(24, 10), (10, 24), (16, 16)]  # tall, wide, square
F64 = torch.float64


def ref_q_scalar(s2: torch.Tensor, degree: int) -> torch.Tensor:
    return sum(c * s2**i for i, c in enumerate(REF_COEFFS[degree]))


def ref_precondition(w: torch.Tensor, degree: int, sigma) -> torch.Tensor:
    """Explicit matrix powers of the Gram matrix on the smaller side."""
    x = w / sigma
    m, n = x.shape
    g = x.T @ x if m >= n else x @ x.T
    q = sum(c * torch.linalg.matrix_power(g, i) for i, c in enumerate(REF_COEFFS[degree]))
    return sigma * (x @ q if m >= n else q @ x)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unit(n: int, seed: int) -> torch.Tensor:
    v = rand(n, seed=seed)
    return v / v.norm()
