"""The Triton kernels behind :mod:`pcpretrain.transpose_kernels`, launched on (batch, rows, cols) stacks.

Imported only when a kernel is about to run (importing Triton takes about half a second, which
CPU-only processes should not pay); :mod:`pcpretrain.transpose_kernels` decides when, checks the
first result and falls back to the eager ops.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 64


@triton.jit
def _transpose_tiles(src, dst, rows, cols, src_batch, src_row, dst_batch, dst_row, BLOCK: tl.constexpr):
    """dst[b, i, j] = src[b, j, i] over one BLOCK x BLOCK tile of dst (rows x cols)."""
    b = tl.program_id(2).to(tl.int64)
    i = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    j = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    tile = tl.load(
        src + b * src_batch + j[:, None] * src_row + i[None, :],
        mask=(j[:, None] < cols) & (i[None, :] < rows),
    )
    tl.store(
        dst + b * dst_batch + i[:, None] * dst_row + j[None, :],
        tl.trans(tile),
        mask=(i[:, None] < rows) & (j[None, :] < cols),
    )


@triton.jit
def _symmetric_sum_tiles(x, out, n, x_batch, x_row, out_batch, out_row, BLOCK: tl.constexpr):
    """out = x + x^T over the mirrored tiles (I, J) and (J, I) of out, I <= J, added in out's dtype
    (float32 or float64: no narrowing store, whose rounding the interpreter does not reproduce)."""
    tile_i = tl.program_id(0)
    tile_j = tl.program_id(1)
    if tile_i > tile_j:
        return
    b = tl.program_id(2).to(tl.int64)
    i = (tile_i * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    j = (tile_j * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    upper_mask = (i[:, None] < n) & (j[None, :] < n)
    lower_mask = (j[:, None] < n) & (i[None, :] < n)
    upper = tl.load(x + b * x_batch + i[:, None] * x_row + j[None, :], mask=upper_mask)
    lower = tl.load(x + b * x_batch + j[:, None] * x_row + i[None, :], mask=lower_mask)
    total = upper.to(out.dtype.element_ty) + tl.trans(lower.to(out.dtype.element_ty))
    tl.store(out + b * out_batch + i[:, None] * out_row + j[None, :], total, mask=upper_mask)
    tl.store(out + b * out_batch + j[:, None] * out_row + i[None, :], tl.trans(total), mask=lower_mask)


def on_device_of(t: Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``t``'s GPU, whichever is current (CPU tensors: under the interpreter, nothing to set)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def transpose_into(dst: Tensor, src: Tensor) -> None:
    """dst = src^T per matrix, both (batch, rows, cols) views with unit stride along rows."""
    rows, cols = dst.shape[-2:]
    grid = (triton.cdiv(rows, BLOCK), triton.cdiv(cols, BLOCK), dst.shape[0])
    _transpose_tiles[grid](
        src, dst, rows, cols, src.stride(0), src.stride(1), dst.stride(0), dst.stride(1), BLOCK=BLOCK
    )


def symmetric_sum_into(out: Tensor, x: Tensor) -> None:
    """out = x + x^T per matrix, both (batch, n, n) with unit stride along rows; out float32 or float64."""
    n = x.shape[-1]
    tiles = triton.cdiv(n, BLOCK)
    _symmetric_sum_tiles[(tiles, tiles, x.shape[0])](
        x, out, n, x.stride(0), x.stride(1), out.stride(0), out.stride(1), BLOCK=BLOCK
    )
