"""Transposing copies and symmetric sums of matrix stacks, in coalesced tiles on CUDA.

On CUDA, ``dst.copy_(src.mT)`` and ``x + x.mT`` run through PyTorch's generic elementwise kernel,
which walks the result in memory order and so reads the transposed operand one row apart per element:
each 32-byte sector it fetches serves one element (pytorch/pytorch#113560: ~9x slower than a tiled
copy for 1-byte elements, less for wider ones). The symmetric products of
:mod:`pcpretrain.batched_matmul` fill the blocks below their diagonal with such copies, and the PC
derivative symmetrises two n x n matrices per layer and step. The Triton kernels used here move
64 x 64 tiles through on-chip memory instead, so reads and writes are both coalesced; the symmetric
sum handles each pair of mirrored tiles once, reading the input once and writing both tiles of the
result.

The kernels (:mod:`pcpretrain.transpose_tiles`, imported on first need) run on CUDA tensors where
Triton is installed, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, how the
tests run them); everywhere else the eager ops run, with the same results bit for bit. The first
launch per kernel, dtype and device type is checked against the eager op; a mismatch or an error
turns that kernel off for the process with a warning, so a GPU or Triton version the kernels were
never tried on costs speed, never correctness.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

# Kernels switched off (by set_transpose_kernels, or after a failed first check) and the
# (kernel, dtype, device type) combinations whose first launch matched the eager op.
_DISABLED: set[str] = set()
_CHECKED: set[tuple[str, torch.dtype, str]] = set()


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (found without importing it)."""
    return importlib.util.find_spec("triton") is not None


def set_transpose_kernels(enabled: bool) -> bool:
    """Use the tiled kernels where they apply (the default) or always the eager ops, for benchmarks that
    compare the two; returns the previous setting."""
    previous = "user" not in _DISABLED
    if enabled:
        _DISABLED.discard("user")
    else:
        _DISABLED.add("user")
    return previous


def transposes_label() -> str:
    """How transposing copies and symmetric sums run now, for benchmark headers (the kernels only ever
    take CUDA tensors outside the interpreter)."""
    if not triton_available():
        return "transposes eager (no Triton)"
    return "transposes in tiled kernels on CUDA" if _kernels_on("copy") else "transposes eager"


def _kernels_on(name: str) -> bool:
    return not _DISABLED & {"user", name} and triton_available()


def _kernel_applies(name: str, *tensors: Tensor) -> bool:
    """Whether ``name``'s kernel takes these tensors: on CUDA (or any device under the interpreter), 2-D
    or 3-D, unit stride along rows, not empty, and not while torch.compile traces (as in an evaluation
    forward of a compiled layer that computes W_eff itself: inductor then tiles the eager op's
    transpose on its own)."""
    if torch.compiler.is_compiling():
        return False
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    return all(
        (t.is_cuda or interpreting) and t.ndim in (2, 3) and t.stride(-1) == 1 and t.numel() > 0
        for t in tensors
    ) and _kernels_on(name)


def _stack(t: Tensor) -> Tensor:
    """A matrix as a stack of one, so the kernels always see (batch, rows, cols)."""
    return t.unsqueeze(0) if t.ndim == 2 else t


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal bit for bit as values, NaN matching NaN (an input's NaN must not turn a kernel off)."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _checked_launch(
    name: str, launch: Callable[[], None], result: Tensor, eager: Callable[[], Tensor]
) -> bool:
    """Run ``launch``; on its first use per dtype and device type, compare ``result`` with ``eager()``.
    False (the kernel now off, with a warning) if it failed or differed: the caller then runs the eager op."""
    key = (name, result.dtype, result.device.type)
    try:
        launch()
        if key in _CHECKED:
            return True
        if _same(result, eager()):
            _CHECKED.add(key)
            return True
        reason = "its result differs from the eager op's"
    except Exception as error:  # noqa: BLE001 - any failure of an untried kernel falls back to eager
        reason = f"it failed with {type(error).__name__}: {error}"
    _DISABLED.add(name)
    warnings.warn(
        f"the tiled {name} kernel is off for this process because {reason}; the eager op runs instead "
        f"(slower on CUDA, same results)",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


def copy_transposed_(dst: Tensor, src: Tensor) -> Tensor:
    """``dst[..., i, j] = src[..., j, i]`` in place (``dst.copy_(src.mT)``) for a matrix or a stack of
    them (3-D views with any batch and row strides, e.g. disjoint blocks of one larger stack); returns
    ``dst``."""
    if src.shape[:-2] != dst.shape[:-2] or src.shape[-2:] != dst.shape[-2:][::-1] or src.dtype != dst.dtype:
        raise ValueError(
            f"cannot copy the transpose of {tuple(src.shape)} {src.dtype} into {tuple(dst.shape)} {dst.dtype}"
        )
    if _kernel_applies("copy", dst, src):

        def launch() -> None:
            from pcpretrain.transpose_tiles import on_device_of, transpose_into

            with on_device_of(dst):
                transpose_into(_stack(dst), _stack(src))

        if _checked_launch("copy", launch, dst, lambda: src.mT):
            return dst
    return dst.copy_(src.mT)


def symmetric_sum(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``x + x^T`` per matrix of a stack of square matrices, as a new contiguous tensor in ``dtype``
    (default: x's), added in that dtype. The kernel writes float32 and float64 results (the PC
    derivative's); narrower ones, which would round, come from the eager op."""
    dtype = dtype or x.dtype

    def eager() -> Tensor:
        wide = x.to(dtype)
        return wide + wide.mT

    if (
        dtype not in (torch.float32, torch.float64)
        or not _kernel_applies("sum", x)
        or x.shape[-1] != x.shape[-2]
    ):
        return eager()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)

    def launch() -> None:
        from pcpretrain.transpose_tiles import on_device_of, symmetric_sum_into

        with on_device_of(out):
            symmetric_sum_into(_stack(out), _stack(x))

    return out if _checked_launch("sum", launch, out, eager) else eager()
