"""The PC transform as plain functions: the polynomial, the spectral-norm estimate, W_eff and its gradient.

A target weight W (m x n, out x in) is used in the forward pass as

    sigma = u^T W v + eps                      (power-iteration estimate of ||W||_2, differentiable in W)
    X     = W / sigma
    P     = X q_k(X^T X)  if m >= n  else  q_k(X X^T) X
    W_eff = gamma * stopgrad(sigma) * P

so every singular value s of X is mapped to s * q_k(s^2), which flattens the spectrum.
:mod:`pcpretrain.pc` wraps these functions into layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# Coefficients of q_k in ascending powers of the Gram matrix G. Single source of truth.
PC_COEFFICIENTS: dict[int, tuple[float, ...]] = {
    1: (1.507, -0.507),
    2: (2.083, -1.643, 0.560),
    3: (2.909, -4.649, 4.023, -1.283),
    4: (3.625, -9.261, 14.097, -10.351, 2.890),
}
SIGMA_EPS = 1e-7


def check_degree(degree: int) -> int:
    if degree != 0 and degree not in PC_COEFFICIENTS:
        raise ValueError(f"PC degree must be in 0-4 (0 = no preconditioning), got {degree!r}")
    return int(degree)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the input dtype when it is wider (float64): never below single precision."""
    return torch.promote_types(dtype, torch.float32)


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for CUDA float32 matmuls inside the block, restored afterwards.

    TF32 rounds matmul inputs to a 10-bit mantissa: several times the float32 matmul speed on recent GPUs,
    at a relative error of about 1e-3 in W_eff (``scripts/pc_numerics.py``); on CPUs it changes nothing.
    """
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


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


def _tall(x: Tensor) -> bool:
    """Whether the Gram matrix goes on the column side (X^T X): the smaller side, so it is cheapest."""
    return x.shape[-2] >= x.shape[-1]


def polynomial_map(x: Tensor, degree: int) -> Tensor:
    """X q_k(G) with the Gram matrix on the smaller side (cheapest, and exact for both shapes)."""
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    if coeffs is None:
        return x
    tall = _tall(x)
    gram = x.mT @ x if tall else x @ x.mT
    (q,) = _horner_terms(gram, coeffs, keep_all=False)
    return x @ q if tall else q @ x


def polynomial_map_vjp(x: Tensor, grad: Tensor, degree: int) -> tuple[Tensor, Tensor]:
    """(dL/dX, <grad, P>) for P = polynomial_map(X) and dL/dP = grad, without forming P.

    For the tall case P = X q(G), G = X^T X: with A = X^T grad, the adjoint of Horner's recursion gives
    B = sum_i (G^i A) h_{i+1}, and dL/dX = grad q(G) + X (B + B^T). That is four m x n x n products (G
    and three for the gradient) where autograd needs six (it recomputes P, then differentiates both
    products); the m x n x n products are most of the per-step transform's cost.
    The wide case is the tall case of the transposes. <grad, P> = <A, q(G)> gives gamma's gradient.
    """
    coeffs = PC_COEFFICIENTS.get(check_degree(degree))
    if coeffs is None:
        return grad, (grad * x).sum()
    tall = _tall(x)
    xt, gt = (x, grad) if tall else (x.mT, grad.mT)
    gram = xt.mT @ xt
    terms = _horner_terms(gram, coeffs, keep_all=True)
    a = xt.mT @ gt
    inner = (a * terms[0]).sum()
    b = torch.zeros_like(a)
    for h_next in terms[1:]:
        b += a @ h_next
        a = gram @ a
    b += coeffs[-1] * a
    sym = b + b.mT
    # Both q(G) and B + B^T are symmetric, so the wide case's transpose is formed directly (contiguous).
    return (torch.addmm(grad @ terms[0], x, sym) if tall else torch.addmm(terms[0] @ grad, sym, x)), inner


def precondition(weight: Tensor, degree: int, sigma: Tensor | float) -> Tensor:
    """sigma * X q_k(G) with X = weight / sigma: the transform without gamma, for analysis and tests."""
    return sigma * polynomial_map(weight / sigma, degree)


def spectral_norm_estimate(weight: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """u^T W v + eps; differentiable in W so the normalisation inside X carries gradient."""
    return u.to(weight.dtype) @ (weight @ v.to(weight.dtype)) + SIGMA_EPS


@torch.no_grad()
def power_iteration_(weight: Tensor, u: Tensor, v: Tensor, iters: int) -> None:
    """Warm-started power iteration, in place on u, v; float32+ so the estimate is not bf16-noisy."""
    w = weight.detach().to(compute_dtype(weight.dtype))
    uu, vv = u.to(w.dtype), v.to(w.dtype)
    for _ in range(iters):
        vv = F.normalize(w.mT @ uu, dim=0)
        uu = F.normalize(w @ vv, dim=0)
    u.copy_(uu)
    v.copy_(vv)


def effective_weight(weight: Tensor, gamma: Tensor, u: Tensor, v: Tensor, degree: int) -> Tensor:
    """gamma * stopgrad(sigma) * X q_k(G), always computed in float32 (float64 for float64 weights).

    Why not in bf16 under autocast: the polynomial's large alternating coefficients (e.g. +14.1 G^2
    - 10.4 G^3 at degree 4) cancel catastrophically with bf16's 8-bit mantissa, destroying the
    singular-value map, and sigma / the normalisation need float32 range. Autocast is therefore disabled
    here and the result is cast back to weight.dtype. Merging calls this same function, so merged weights
    equal the weights used in training exactly.
    """
    with autocast_off(weight.device.type):
        dtype = compute_dtype(weight.dtype)
        w = weight.to(dtype)
        sigma = spectral_norm_estimate(w, u, v)
        out = gamma.to(dtype) * sigma.detach() * polynomial_map(w / sigma, degree)
    return out.to(weight.dtype)


@torch.no_grad()
def effective_weight_vjp(
    weight: Tensor, gamma: Tensor, u: Tensor, v: Tensor, degree: int, grad: Tensor
) -> tuple[Tensor, Tensor]:
    """(dL/dweight, dL/dgamma) of :func:`effective_weight` for dL/dW_eff = ``grad``, in closed form.

    With X = W / sigma(W) and D = dL/dX of the polynomial for ``grad``:
    dL/dW = gamma * (D - <D, X> u v^T) (sigma's own gradient enters through X only) and
    dL/dgamma = stopgrad(sigma) * <grad, P>. Same precision rules as the forward.
    """
    with autocast_off(weight.device.type):
        dtype = compute_dtype(weight.dtype)
        w = weight.to(dtype)
        sigma = spectral_norm_estimate(w, u, v)
        x = w / sigma
        dx, inner = polynomial_map_vjp(x, grad.to(dtype), degree)
        uu, vv = u.to(dtype), v.to(dtype)
        dx.addr_(uu * -(dx * x).sum(), vv)  # a tensor factor: no host sync per layer
        grad_weight = gamma.to(dtype) * dx
        grad_gamma = (sigma * inner).reshape(gamma.shape)
    return grad_weight.to(weight.dtype), grad_gamma.to(gamma.dtype)
