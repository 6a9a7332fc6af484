"""The spectral-norm estimate sigma = u^T W v and the warm-started power iteration that refreshes u, v.

Both work on one matrix ``(m, n)`` with ``u (m,)``, ``v (n,)`` or on a stack ``(B, m, n)`` with
``u (B, m)``, ``v (B, n)``; a stack costs the launches of one matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pcpretrain.pc.precision import compute_dtype

SIGMA_EPS = 1e-7


def _matvec(w: Tensor, x: Tensor) -> Tensor:
    return (w @ x.unsqueeze(-1)).squeeze(-1)


def spectral_norm_estimate(weight: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """u^T W v + eps per matrix; differentiable in W so the normalisation inside X carries gradient."""
    return (u.to(weight.dtype) * _matvec(weight, v.to(weight.dtype))).sum(dim=-1) + SIGMA_EPS


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
