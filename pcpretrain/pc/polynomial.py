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

from pcpretrain.batched_matmul import add_matmul_, symmetric_matmul
from pcpretrain.choices import PC_COEFFICIENTS
from pcpretrain.transpose_kernels import symmetric_sum


def check_degree(degree: int) -> int:
    """The degree as an int, or a ValueError naming the allowed ones (0 means no preconditioning)."""
    if degree != 0 and degree not in PC_COEFFICIENTS:
        raise ValueError(f"PC degree must be in 0-4 (0 = no preconditioning), got {degree!r}")
    return int(degree)


def _add_to_diagonal_(matrix: Tensor, value: float) -> Tensor:
    """``matrix += value * I`` in place, per matrix of a stack: touches n elements, not n^2."""
    matrix.diagonal(dim1=-2, dim2=-1).add_(value)
    return matrix


class _PolynomialAtGram:
    """q_k at a Gram matrix G (or a stack of them), evaluated as ``q = c0 I + c1 G + G^2 T`` with
    ``T = c2 I + c3 G + c4 G^2`` (the terms whose coefficients exist, degree <= 4).

    Two n x n products for degrees 3 and 4 (G^2, then G^2 T) where Horner's rule takes three, and one
    for degree 2. Its derivative along a symmetric S takes three more (S G, then D(G^2) T and G^2 D(T))
    where the adjoint of Horner's recursion takes six, since D(G^2)[S] = S G + G S and G S = (S G)^T
    for symmetric S and G. T is kept divided by the top coefficient (monic, so never a division by
    zero), which goes into the products' epilogue instead of a pass over the matrices.
    """

    def __init__(self, gram: Tensor, coeffs: tuple[float, ...]) -> None:
        if not 2 <= len(coeffs) <= 5:
            raise ValueError(f"the PC polynomial has degree 1 to 4, got coefficients {coeffs}")
        self.gram, self.coeffs = gram, coeffs
        self.top = coeffs[-1]
        self.square: Tensor | None = None  # G^2, for degrees 3 and 4
        self.tail: Tensor | None = None  # T / c_top, for degrees 3 and 4

    def value(self) -> Tensor:
        """q(G), as a new tensor."""
        c, g = self.coeffs, self.gram
        if len(c) == 2:
            q = g * c[1]
        elif len(c) == 3:
            q = symmetric_matmul([(g, g)], g, beta=c[1], alpha=c[2])
        else:
            self.square = g2 = symmetric_matmul([(g, g)])
            tail = torch.add(g2, g, alpha=c[3] / self.top) if len(c) == 5 else g.clone()
            self.tail = _add_to_diagonal_(tail, c[2] / self.top)
            q = symmetric_matmul([(g2, self.tail)], g, beta=c[1], alpha=self.top)
        return _add_to_diagonal_(q, c[0])

    def derivative(self, s: Tensor) -> Tensor:
        """Dq[S], the derivative of q at G along a symmetric S (symmetric too); after :meth:`value`."""
        c, g = self.coeffs, self.gram
        if len(c) == 2:
            return s * c[1]
        d_square = symmetric_sum(s @ g)
        if len(c) == 3:
            return d_square.mul_(c[2]).add_(s, alpha=c[1])
        d_tail = torch.add(d_square, s, alpha=c[3] / self.top) if len(c) == 5 else s
        # Each of the two products is not symmetric, their sum (the derivative of G^2 T) is.
        return symmetric_matmul([(d_square, self.tail), (self.square, d_tail)], s, beta=c[1], alpha=self.top)


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> per matrix of a stack (shape ``a.shape[:-2]``), as an elementwise product and a sum, in the
    inputs' own precision. Not as a batched 1 x K by K x 1 product, which reads less but runs, on CUDA,
    in cuBLAS kernels whose time grows with K at a few ns per element (pytorch/pytorch#114911; K = n^2
    is 4.2M here) and in TF32 where the transform's products may use it."""
    return (a * b).sum(dim=(-2, -1))


def is_tall(x: Tensor) -> bool:
    """Whether the Gram matrix goes on the column side (X^T X): the smaller side, so it is cheapest."""
    return x.shape[-2] >= x.shape[-1]


def smaller_gram(x: Tensor) -> Tensor:
    """X^T X for tall X, X X^T for wide X: the Gram matrix on the smaller side, per matrix of a stack."""
    return symmetric_matmul([(x.mT, x)] if is_tall(x) else [(x, x.mT)])


def scaled_gram(x: Tensor, scale: Tensor | None = None) -> Tensor:
    """The Gram matrix of ``X = scale * x`` on the smaller side (``scale`` per matrix, as ``(..., 1, 1)``):
    the small matrix is scaled, not the large one."""
    return _scaled(smaller_gram(x), _factor(scale, scale))


def _factor(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """The product of two per-matrix factors, None (meaning 1) standing for a missing one."""
    if a is None or b is None:
        return b if a is None else a
    return a * b


def _scaled(t: Tensor, factor: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
    """``factor * t``, written in ``dtype`` (default: ``t``'s) by the same pass that scales it: the small
    matrices that meet the large one in a bf16 product are scaled and cast at once. (Casting while
    scaling writes to an ``out=`` tensor, which autograd refuses: only the gradient-free per-step
    transform asks for another dtype.)"""
    if dtype is None or dtype == t.dtype:
        return t if factor is None else t * factor
    if factor is None:
        return t.to(dtype)
    return torch.mul(t, factor, out=torch.empty_like(t, dtype=dtype))


def _per_matrix_scaled(values: Tensor, factor: Tensor | None) -> Tensor:
    """Per-matrix ``values`` (shape ``(...)``) times a per-matrix factor shaped ``(..., 1, 1)``."""
    return values if factor is None else values * factor.reshape(values.shape)


def polynomial_map(
    x: Tensor,
    degree: int,
    *,
    scale: Tensor | None = None,
    gram: Tensor | None = None,
    out_scale: Tensor | None = None,
    product_dtype: torch.dtype | None = None,
) -> Tensor:
    """``out_scale * X q_k(G)`` for ``X = scale * x``, with the Gram matrix G of X on the smaller side.

    ``x`` may be a stack ``(..., m, n)``; ``scale`` and ``out_scale`` are per-matrix factors shaped
    ``(..., 1, 1)`` (default 1) and ``gram`` is G, :func:`scaled_gram` of ``x`` and ``scale``, when the
    caller has it (then the large ``x`` is read by one matrix product only and never rescaled
    elementwise: both factors are folded into the small n x n matrix q). ``product_dtype`` (e.g. bf16):
    the dtype of that one product and of the result; the Gram matrix and the polynomial stay in
    ``x``'s dtype, since their alternating sums cancel (a narrow dtype there would wreck the
    singular-value map).
    """
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    factor = _factor(scale, out_scale)
    if coeffs is None:
        return _scaled(x, factor)
    gram = scaled_gram(x, scale) if gram is None else gram
    q = _PolynomialAtGram(gram, coeffs).value()
    x, q = _scaled(x, None, product_dtype), _scaled(q, factor, product_dtype)
    return x @ q if is_tall(x) else q @ x


def polynomial_map_vjp(
    x: Tensor,
    grad: Tensor,
    degree: int,
    *,
    scale: Tensor | None = None,
    gram: Tensor | None = None,
    out_scale: Tensor | None = None,
    product_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out_scale * dL/dX, <grad, P>, <dL/dX, X>) per matrix for P = polynomial_map(X), X = scale * x and
    dL/dP = grad, without forming P or X (arguments as in :func:`polynomial_map`).

    For the tall case P = X q(G), G = X^T X: with A = X^T grad, dL/dX = grad q(G) + X Dq[A + A^T], where
    Dq[S] is the derivative of q at G along S (self-adjoint, G being symmetric, so the adjoint that
    the chain rule asks for is Dq itself). That is three m x n x n products (A and the two of the
    gradient; G comes from the caller where it has it) where autograd needs six (it recomputes G and
    P, then differentiates both products); the m x n x n products are most of the per-step transform's
    cost. The wide case is the tall case of the transposes. <grad, P> = <A, q(G)> gives gamma's
    gradient, and <dL/dX, X> = <A, q(G)> + <Dq[A + A^T], G> (sigma's gradient) comes from the small
    n x n factors, so no m x n product of dL/dX and X is ever formed. ``product_dtype``: the
    dtype of the three m x n x n products and of the returned gradient, as in :func:`polynomial_map`.
    """
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    if coeffs is None:
        inner = _per_matrix_scaled((grad * x).sum(dim=(-2, -1)), scale)
        return _scaled(grad, out_scale), inner, inner
    tall = is_tall(x)
    gram = scaled_gram(x, scale) if gram is None else gram
    polynomial = _PolynomialAtGram(gram, coeffs)
    q = polynomial.value()
    x, grad = _scaled(x, None, product_dtype), _scaled(grad, None, product_dtype)
    xt, gt = (x, grad) if tall else (x.mT, grad.mT)
    # A = scale * a with a = x^T grad: everything below is linear in A, so scale goes into the per-matrix
    # scalars and into the one scaling of Dq's result instead of a pass over a. Of a, only a + a^T is
    # formed in the Gram's dtype (straight from a bf16 product: no float32 copy of a), and as q is
    # symmetric <a, q> = <a + a^T, q> / 2: taken from a itself where a already is in that dtype (a + a^T
    # rounds there), from a + a^T after a bf16 product (two bf16 numbers add exactly in float32 unless
    # their exponents lie more than 16 apart).
    a = xt.mT @ gt
    a_sym = symmetric_sum(a, gram.dtype)
    inner_a = _inner(a, q) if a.dtype == gram.dtype else _inner(a_sym, q) * 0.5
    sym = polynomial.derivative(a_sym)
    along_x = _per_matrix_scaled(inner_a + _inner(sym, gram), scale)
    inner = _per_matrix_scaled(inner_a, scale)
    sym_scale = _factor(_factor(scale, scale), out_scale)
    q, sym = _scaled(q, out_scale, product_dtype), _scaled(sym, sym_scale, product_dtype)
    # Both q(G) and Dq[A + A^T] are symmetric, so the wide case's transpose is formed directly (contiguous).
    if tall:
        return add_matmul_(grad @ q, x, sym), inner, along_x
    return add_matmul_(q @ grad, sym, x), inner, along_x


def precondition(weight: Tensor, degree: int, sigma: Tensor | float) -> Tensor:
    """sigma * X q_k(G) with X = weight / sigma: the transform without gamma, for analysis and tests."""
    return sigma * polynomial_map(weight / sigma, degree)
