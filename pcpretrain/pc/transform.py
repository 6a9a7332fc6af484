"""W_eff = gamma * stopgrad(sigma) * X q_k(X^T X) with X = W / sigma, and its gradient in closed form.

A target weight W (m x n, out x in) is used in the forward pass as

    sigma = u^T W v + eps                      (power-iteration estimate of ||W||_2, differentiable in W)
    X     = W / sigma
    W_eff = gamma * stopgrad(sigma) * polynomial_map(X)

Both functions take one matrix (``gamma (1,)``, ``u (m,)``, ``v (n,)``) or a stack of same-shaped ones
(``(B, m, n)``, ``gamma (B, 1)``, ``u (B, m)``, ``v (B, n)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pcpretrain.batched_matmul import add_matmul_
from pcpretrain.pc.polynomial import polynomial_map, polynomial_map_vjp
from pcpretrain.pc.precision import autocast_off, compute_dtype
from pcpretrain.pc.spectral import spectral_norm_estimate


def _per_matrix(scalar: Tensor, like: Tensor) -> Tensor:
    """A per-matrix scalar (``()`` or ``(B,)``; gamma's ``(1,)`` or ``(B, 1)``) shaped to broadcast."""
    return scalar.reshape(*like.shape[:-2], 1, 1)


def _sigma(w: Tensor, u: Tensor, v: Tensor, sigma: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The per-matrix sigma in ``dtype`` shaped to broadcast: the caller's, or u^T W v + eps
    (differentiable in W)."""
    return _per_matrix(spectral_norm_estimate(w, u, v) if sigma is None else sigma.to(dtype), w)


def normalize_gram_(gram: Tensor, sigma: Tensor) -> Tensor:
    """W's Gram matrix (``smaller_gram`` of the float32 weights) turned in place into that of
    X = W / sigma, as the transform computes it: the ``gram`` that :func:`effective_weight` and
    :func:`effective_weight_vjp` take. Done once per step where both phases use it."""
    scale = 1 / _per_matrix(sigma.to(gram.dtype), gram)
    return gram.mul_(scale * scale)


def effective_weight(
    weight: Tensor,
    gamma: Tensor,
    u: Tensor,
    v: Tensor,
    degree: int,
    *,
    gram: Tensor | None = None,
    sigma: Tensor | None = None,
    product_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """gamma * stopgrad(sigma) * X q_k(G), always computed in float32 (float64 for float64 weights).

    Why not in bf16 under autocast: the polynomial's large alternating coefficients (e.g. +14.1 G^2
    - 10.4 G^3 at degree 4) cancel catastrophically with bf16's 8-bit mantissa, destroying the
    singular-value map, and sigma / the normalisation need float32 range. Autocast is therefore disabled
    here and the result is cast back to weight.dtype. Merging calls this same function, so merged weights
    equal the weights used in training exactly.

    X is never formed: W_eff = W (gamma sg(sigma) / sigma) q_k(W^T W / sigma^2), every scalar folded into
    the small matrix. ``gram`` (the Gram matrix of X on the smaller side, see :func:`normalize_gram_`) and
    ``sigma`` (u^T W v + eps) may come from the caller, who computed them for the same weight; no
    gradient flows through a given sigma. ``product_dtype`` (``pc.bf16_products``): the dtype of the
    one product with the large W (see :func:`polynomial_map`). The result comes in ``out_dtype``
    (default: the weight's).
    """
    with autocast_off(weight.device.type):
        dtype = compute_dtype(weight.dtype)
        w = weight.to(dtype)
        s = _sigma(w, u, v, sigma, dtype)
        out_scale = _per_matrix(gamma.to(dtype), w) * s.detach()
        out = polynomial_map(
            w, degree, scale=1 / s, gram=gram, out_scale=out_scale, product_dtype=product_dtype
        )
    return out.to(out_dtype or weight.dtype)


@torch.no_grad()
def effective_weight_vjp(
    weight: Tensor,
    gamma: Tensor,
    u: Tensor,
    v: Tensor,
    degree: int,
    grad: Tensor,
    *,
    gram: Tensor | None = None,
    sigma: Tensor | None = None,
    product_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """(dL/dweight, dL/dgamma) of :func:`effective_weight` for dL/dW_eff = ``grad``, in closed form.

    With X = W / sigma(W) and D = dL/dX of the polynomial for ``grad``:
    dL/dW = gamma * (D - <D, X> u v^T) (sigma's own gradient enters through X only) and
    dL/dgamma = stopgrad(sigma) * <grad, P>. Same precision rules, ``gram``, ``sigma`` and
    ``product_dtype`` (here its three products with the large matrices) as the forward; gamma and
    1/sigma are folded into the small matrices, so the large ones are read by the matrix products and
    by the rank-one correction only. Given ``gram`` and ``sigma``, those products are all W enters,
    so ``weight`` may come already in ``product_dtype`` (the caller stacked it so, saving a float32
    stack and its conversion); dL/dweight comes in ``out_dtype`` (default: the weight's).
    """
    with autocast_off(weight.device.type):
        dtype = compute_dtype(weight.dtype)
        narrow = weight.dtype == product_dtype and gram is not None and sigma is not None
        w = weight if narrow else weight.to(dtype)
        s = _sigma(w, u, v, sigma, dtype)
        g = _per_matrix(gamma.to(dtype), w)
        grad_weight, inner, along_x = polynomial_map_vjp(
            w, grad.to(dtype), degree, scale=1 / s, gram=gram, out_scale=g, product_dtype=product_dtype
        )
        # Sigma's rank-one term goes in in the products' dtype: with bf16 products, the sum is then
        # converted to the weights' dtype once, and the large matrix is read and written in bf16.
        grad_dtype = grad_weight.dtype
        coeff = -along_x * g.reshape(along_x.shape)
        add_matmul_(
            grad_weight,
            (u.to(dtype) * coeff.unsqueeze(-1)).unsqueeze(-1).to(grad_dtype),
            v.to(grad_dtype).unsqueeze(-2),
        )
        grad_gamma = (s.reshape(inner.shape) * inner).reshape(gamma.shape)
    return grad_weight.to(out_dtype or weight.dtype), grad_gamma.to(gamma.dtype)
