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


def _add_to_diagonal_(matrix: Tensor, value: float) -> Tensor:
    """``matrix += value * I`` in place, per matrix of a stack: touches n elements, not n^2."""
    matrix.diagonal(dim1=-2, dim2=-1).add_(value)
    return matrix


def _horner_terms(gram: Tensor, coeffs: tuple[float, ...], keep_all: bool) -> list[Tensor]:
    """Horner's partial polynomials h_i = c_i I + G h_{i+1} (h_k = c_k I), as [h_0, ..., h_{k-1}].

    h_0 is q_k(G). The gradient needs every h_i; the forward pass only h_0, so it drops the others
    as it goes (``keep_all=False`` returns [h_0]). Each step is one matrix product and an addition to
    its diagonal: no identity matrix is formed, and nothing else passes over the n x n matrices.
    """
    h = _add_to_diagonal_(gram * coeffs[-1], coeffs[-2])
    terms = [h]
    for c in reversed(coeffs[:-2]):
        h = _add_to_diagonal_(gram @ h, c)
        terms = [h, *terms] if keep_all else [h]
    return terms


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> per matrix of a stack (shape ``a.shape[:-2]``): a row-times-column product per matrix, which
    reads both once and writes no elementwise product."""
    return (a.flatten(-2).unsqueeze(-2) @ b.flatten(-2).unsqueeze(-1)).reshape(a.shape[:-2])


def is_tall(x: Tensor) -> bool:
    """Whether the Gram matrix goes on the column side (X^T X): the smaller side, so it is cheapest."""
    return x.shape[-2] >= x.shape[-1]


def smaller_gram(x: Tensor) -> Tensor:
    """X^T X for tall X, X X^T for wide X: the Gram matrix on the smaller side, per matrix of a stack."""
    return x.mT @ x if is_tall(x) else x @ x.mT


def _factor(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """The product of two per-matrix factors, None (meaning 1) standing for a missing one."""
    if a is None or b is None:
        return b if a is None else a
    return a * b


def _scaled(t: Tensor, factor: Tensor | None) -> Tensor:
    return t if factor is None else t * factor


def _in(dtype: torch.dtype | None, *tensors: Tensor) -> list[Tensor]:
    """The tensors in ``dtype`` (unchanged for None): the operands of a product with the large matrix."""
    return [t if dtype is None else t.to(dtype) for t in tensors]


def polynomial_map(
    x: Tensor,
    degree: int,
    *,
    scale: Tensor | None = None,
    gram: Tensor | None = None,
    out_scale: Tensor | None = None,
    product_dtype: torch.dtype | None = None,
) -> Tensor:
    """``out_scale * X q_k(G)`` for ``X = scale * x``, with the Gram matrix G on the smaller side.

    ``x`` may be a stack ``(..., m, n)``; ``scale`` and ``out_scale`` are per-matrix factors shaped
    ``(..., 1, 1)`` (default 1) and ``gram`` is :func:`smaller_gram` of ``x`` when the caller has it.
    Both factors are folded into the small n x n matrix q, so the large m x n operand is read by one
    matrix product only and never rescaled elementwise. ``product_dtype`` (e.g. bf16): the dtype of that
    one product and of the result; the Gram matrix and the polynomial stay in ``x``'s dtype, since
    their alternating sums cancel (a narrow dtype there would wreck the singular-value map).
    """
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    factor = _factor(scale, out_scale)
    if coeffs is None:
        return _scaled(x, factor)
    gram = smaller_gram(x) if gram is None else gram
    (q,) = _horner_terms(_scaled(gram, _factor(scale, scale)), coeffs, keep_all=False)
    x, q = _in(product_dtype, x, _scaled(q, factor))
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

    For the tall case P = X q(G), G = X^T X: with A = X^T grad, the adjoint of Horner's recursion gives
    B = sum_i (G^i A) h_{i+1}, and dL/dX = grad q(G) + X (B + B^T). That is three m x n x n products
    (A and the two of the gradient; G comes from the caller where it has it) where autograd needs six
    (it recomputes G and P, then differentiates both products); the m x n x n products are most of the
    per-step transform's cost. The wide case is the tall case of the transposes. <grad, P> = <A, q(G)>
    gives gamma's gradient, and <dL/dX, X> = <A, q(G)> + <B + B^T, G> (sigma's gradient) comes from the
    small n x n factors, so no m x n product of dL/dX and X is ever formed. ``product_dtype``: the
    dtype of the three m x n x n products and of the returned gradient, as in :func:`polynomial_map`.
    """
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    if coeffs is None:
        inner = _scaled((grad * x).sum(dim=(-2, -1), keepdim=True), scale)
        inner = inner.reshape(inner.shape[:-2])
        return _scaled(grad, out_scale), inner, inner
    tall = is_tall(x)
    gram = smaller_gram(x) if gram is None else gram
    gram = _scaled(gram, _factor(scale, scale))
    terms = _horner_terms(gram, coeffs, keep_all=True)
    x, grad = _in(product_dtype, x, grad)
    xt, gt = (x, grad) if tall else (x.mT, grad.mT)
    a = _scaled((xt.mT @ gt).to(gram.dtype), scale)
    inner = _inner(a, terms[0])
    if len(terms) == 1:
        b = a * coeffs[-1]
    else:
        b = a @ terms[1]
        for h_next in terms[2:]:
            a = gram @ a
            add_matmul_(b, a, h_next)
        b.add_(gram @ a, alpha=coeffs[-1])
    sym = b + b.mT
    along_x = inner + _inner(sym, gram)
    q, sym = _in(product_dtype, _scaled(terms[0], out_scale), _scaled(sym, _factor(scale, out_scale)))
    # Both q(G) and B + B^T are symmetric, so the wide case's transpose is formed directly (contiguous).
    if tall:
        return add_matmul_(grad @ q, x, sym), inner, along_x
    return add_matmul_(q @ grad, sym, x), inner, along_x


def precondition(weight: Tensor, degree: int, sigma: Tensor | float) -> Tensor:
    """sigma * X q_k(G) with X = weight / sigma: the transform without gamma, for analysis and tests."""
    return sigma * polynomial_map(weight / sigma, degree)
