"""The precision rules of the PC transform: float32 or wider, autocast off, TF32 only where asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the input dtype when it is wider (float64): never below single precision."""
    return torch.promote_types(dtype, torch.float32)


def product_dtype(requested: bool | None, forward_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype of the per-step transform's products with the large matrices (``pc.bf16_products``):
    bf16 when asked, and by default (``None``) when the forward runs in bf16 anyway, where W_eff is
    rounded to bf16 for every matmul and bf16 products add error of that same order; None (float32)
    otherwise."""
    if requested is None:
        requested = forward_dtype == torch.bfloat16
    return torch.bfloat16 if requested else None


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled for ``device_type`` (a no-op where autocast does not exist)."""
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
