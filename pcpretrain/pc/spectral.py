"""The spectral-norm estimate sigma = u^T W v and the warm-started power iteration that refreshes u, v.

All work on one matrix ``(m, n)`` with ``u (m,)``, ``v (n,)`` or on a stack ``(B, m, n)`` with
``u (B, m)``, ``v (B, n)``; a stack costs the launches of one matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pcpretrain.pc.polynomial import is_tall
from pcpretrain.pc.precision import compute_dtype

SIGMA_EPS = 1e-7


def _matvec(w: Tensor, x: Tensor) -> Tensor:
    return (w @ x.unsqueeze(-1)).squeeze(-1)


def spectral_norm_estimate(weight: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """u^T W v + eps per matrix; differentiable in W so the normalisation inside X carries gradient."""
    return _estimate(u, _matvec(weight, v.to(weight.dtype)))


def _estimate(u: Tensor, weight_v: Tensor) -> Tensor:
    """u^T W v + eps from the product W v, in its dtype."""
    return (u.to(weight_v.dtype) * weight_v).sum(dim=-1) + SIGMA_EPS


@torch.no_grad()
def power_iteration_(weight: Tensor, u: Tensor, v: Tensor, iters: int) -> None:
    """Warm-started power iteration, in place on u, v; float32+ so the estimate is not bf16-noisy."""
    w = weight.detach().to(compute_dtype(weight.dtype))
    uu, vv = u.to(w.dtype), v.to(w.dtype)
    for _ in range(iters):
        vv = F.normalize(_matvec(w.mT, uu), dim=-1)
        uu = F.normalize(_matvec(w, vv), dim=-1)
    u.copy_(uu)
    v.copy_(vv)


@torch.no_grad()
def power_iteration_with_gram_(weight: Tensor, gram: Tensor, u: Tensor, v: Tensor, iters: int) -> Tensor:
    """:func:`power_iteration_` from the Gram matrix on the smaller side (``smaller_gram(weight)``);
    returns the new estimate, ``spectral_norm_estimate(weight, u, v)`` at the updated u, v.

    One iteration ``v <- N(W^T u); u <- N(W v)`` is ``v <- N(W^T W v)`` on the column side and
    ``u <- N(W W^T u)`` on the row side, so the same iterates come from ``iters - 1`` products with the
    small Gram and two with W, instead of ``2 iters`` passes over W. Worth it where the Gram is needed
    anyway: the per-step transform reuses it for the step that follows. The estimate reuses the last
    product, W v: the same numbers as a separate :func:`spectral_norm_estimate`, one pass over W fewer.
    """
    w = weight.detach().to(compute_dtype(weight.dtype))
    if iters < 1:
        return spectral_norm_estimate(w, u, v)
    g = gram.to(w.dtype)
    uu = u.to(w.dtype)
    if is_tall(w):
        vv = F.normalize(_matvec(w.mT, uu), dim=-1)
        for _ in range(iters - 1):
            vv = F.normalize(_matvec(g, vv), dim=-1)
    else:
        for _ in range(iters - 1):
            uu = F.normalize(_matvec(g, uu), dim=-1)
        vv = F.normalize(_matvec(w.mT, uu), dim=-1)
    # u from v as stored (rounded to its buffer's dtype where narrower), so that W v serves both.
    v.copy_(vv)
    weight_v = _matvec(w, v.to(w.dtype))
    u.copy_(F.normalize(weight_v, dim=-1))
    return _estimate(u, weight_v)
