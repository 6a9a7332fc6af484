"""The PC polynomial and its closed-form backward: pure functions of X, batched over leading dimensions.

Every singular value s of X (shape ``(..., m, n)``) is mapped to s * q_k(s^2) by

    P = X q_k(X^T X)  if m >= n  else  q_k(X X^T) X

with the Gram matrix on the smaller side (cheapest, and exact for both shapes). A stack of
same-shaped matrices goes through each function as one chain of batched matrix products, so the
number of kernel launches depends on the number of shapes, not on the number of matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pcpretrain.choices import PC_COEFFICIENTS


def check_degree(degree: int) -> int:
    """The degree as an int, or a ValueError naming the allowed ones (0 means no preconditioning)."""
    if degree != 0 and degree not in PC_COEFFICIENTS:
        raise ValueError(f"PC degree must be in 0-4 (0 = no preconditioning), got {degree!r}")
    return int(degree)


def add_matmul_(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out += a @ b`` in place, for single matrices and for stacks (no temporary for the product)."""
    return out.addmm_(a, b) if out.ndim == 2 else out.baddbmm_(a, b)


def _horner_terms(gram: Tensor, coeffs: tuple[float, ...], keep_all: bool) -> list[Tensor]:
    """Horner's partial polynomials h_i = c_i I + G h_{i+1} (h_k = c_k I), as [h_0, ..., h_{k-1}].

    h_0 is q_k(G). The gradient needs every h_i; the forward pass only h_0, so it drops the others
    as it goes (``keep_all=False`` returns [h_0]).
    """
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    h = coeffs[-1] * gram + coeffs[-2] * eye
    terms = [h]
    for c in reversed(coeffs[:-2]):
        h = gram @ h + c * eye
        terms = [h, *terms] if keep_all else [h]
    return terms


def is_tall(x: Tensor) -> bool:
    """Whether the Gram matrix goes on the column side (X^T X): the smaller side, so it is cheapest."""
    return x.shape[-2] >= x.shape[-1]


def polynomial_map(x: Tensor, degree: int) -> Tensor:
    """X q_k(G) with the Gram matrix on the smaller side; ``x`` may be a stack ``(..., m, n)``."""
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    if coeffs is None:
        return x
    tall = is_tall(x)
    gram = x.mT @ x if tall else x @ x.mT
    (q,) = _horner_terms(gram, coeffs, keep_all=False)
    return x @ q if tall else q @ x


def polynomial_map_vjp(x: Tensor, grad: Tensor, degree: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dX, <grad, P>, <dL/dX, X>) per matrix for P = polynomial_map(X) and dL/dP = grad, without
    forming P.

    For the tall case P = X q(G), G = X^T X: with A = X^T grad, the adjoint of Horner's recursion gives
    B = sum_i (G^i A) h_{i+1}, and dL/dX = grad q(G) + X (B + B^T). That is four m x n x n products (G
    and three for the gradient) where autograd needs six (it recomputes P, then differentiates both
    products); the m x n x n products are most of the per-step transform's cost.
    The wide case is the tall case of the transposes. <grad, P> = <A, q(G)> gives gamma's gradient, and
    <dL/dX, X> = <A, q(G)> + <B + B^T, G> (sigma's gradient) comes from the small n x n factors, so no
    m x n product of dL/dX and X is ever formed.
    """
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    if coeffs is None:
        inner = (grad * x).sum(dim=(-2, -1))
        return grad, inner, inner
    tall = is_tall(x)
    xt, gt = (x, grad) if tall else (x.mT, grad.mT)
    gram = xt.mT @ xt
    terms = _horner_terms(gram, coeffs, keep_all=True)
    a = xt.mT @ gt
    inner = (a * terms[0]).sum(dim=(-2, -1))
    b = torch.zeros_like(a)
    for h_next in terms[1:]:
        add_matmul_(b, a, h_next)
        a = gram @ a
    b += coeffs[-1] * a
    sym = b + b.mT
    along_x = inner + (sym * gram).sum(dim=(-2, -1))
    # Both q(G) and B + B^T are symmetric, so the wide case's transpose is formed directly (contiguous).
    if tall:
        return add_matmul_(grad @ terms[0], x, sym), inner, along_x
    return add_matmul_(terms[0] @ grad, sym, x), inner, along_x


def precondition(weight: Tensor, degree: int, sigma: Tensor | float) -> Tensor:
    """sigma * X q_k(G) with X = weight / sigma: the transform without gamma, for analysis and tests."""
    return sigma * polynomial_map(weight / sigma, degree)
