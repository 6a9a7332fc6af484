"""Matrix products with their scaling and sum in the GEMM's epilogue, for a matrix or a stack.

An elementwise pass over the operands of the PC transform or of Newton-Schulz costs a noticeable
fraction of a product at the 1B shapes, so the two hot paths fold ``beta * c + alpha * (a @ b)`` into
the product itself (``addmm`` / ``baddbmm``) instead of scaling and adding on their own.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from pcpretrain.transpose_kernels import copy_transposed_, set_transpose_kernels, transposes_label


def scaled_matmul_add(c: Tensor, a: Tensor, b: Tensor, beta: float = 1.0, alpha: float = 1.0) -> Tensor:
    """``beta * c + alpha * (a @ b)`` as one product, for a matrix or any stack (leading dimensions
    flattened into one batch)."""
    if c.ndim == 2:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    lead = c.shape[:-2]
    out = torch.baddbmm(
        c.reshape(-1, *c.shape[-2:]),
        a.reshape(-1, *a.shape[-2:]),
        b.reshape(-1, *b.shape[-2:]),
        beta=beta,
        alpha=alpha,
    )
    return out.reshape(*lead, *out.shape[-2:])


def add_matmul_(out: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``out += alpha * (a @ b)`` in place, for a matrix or a stack of them (no temporary for the product)."""
    return out.addmm_(a, b, alpha=alpha) if out.ndim == 2 else out.baddbmm_(a, b, alpha=alpha)


# How products with a symmetric result are cut into row strips: at most MAX_STRIPS strips of at least
# MIN_STRIP_ROWS rows each (smaller results are one plain product). 4 strips of 512 rows at the 1B
# shapes (n = 2048) compute 10 of the 16 blocks: 37.5% fewer FLOPs, for 4 products instead of one and
# 3 transposing copies of the blocks below the diagonal (6 of 16 blocks written twice).
MAX_STRIPS, MIN_STRIP_ROWS = 4, 512
_STRIPS = {"max_strips": MAX_STRIPS, "min_rows": MIN_STRIP_ROWS}


def set_symmetric_strips(max_strips: int, min_rows: int = MIN_STRIP_ROWS) -> tuple[int, int]:
    """Cut products with a symmetric result into at most ``max_strips`` strips of at least ``min_rows``
    rows from now on (``max_strips=1``: whole products), for benchmarks that compare the two; returns
    the previous setting."""
    if max_strips < 1 or min_rows < 1:
        raise ValueError(f"max_strips and min_rows must be >= 1, got {max_strips} and {min_rows}")
    previous = (_STRIPS["max_strips"], _STRIPS["min_rows"])
    _STRIPS.update(max_strips=max_strips, min_rows=min_rows)
    return previous


@contextmanager
def symmetric_strips(max_strips: int, min_rows: int = MIN_STRIP_ROWS) -> Iterator[None]:
    """:func:`set_symmetric_strips` within the block only (tests use it to cut small matrices)."""
    previous = set_symmetric_strips(max_strips, min_rows)
    try:
        yield
    finally:
        set_symmetric_strips(*previous)


def add_product_options(parser: argparse.ArgumentParser) -> None:
    """The benchmarks' ``--symmetric-strips K`` (:func:`set_symmetric_strips`) and ``--eager-transposes``
    (:func:`pcpretrain.transpose_kernels.set_transpose_kernels`), to compare the ways side by side."""
    parser.add_argument(
        "--symmetric-strips",
        type=int,
        default=MAX_STRIPS,
        choices=range(1, 9),
        metavar="K",
        help=f"compute products with a symmetric result in up to K row strips (default {MAX_STRIPS}; 1: "
        "whole products, for comparison)",
    )
    parser.add_argument(
        "--eager-transposes",
        action="store_true",
        help="transposing copies and symmetric sums as eager ops, not in tiled kernels (for comparison)",
    )


def apply_product_options(args: argparse.Namespace) -> str:
    """Set what :func:`add_product_options` parsed; returns how products now run, for benchmark headers."""
    set_symmetric_strips(args.symmetric_strips)
    set_transpose_kernels(not args.eager_transposes)
    strips = _STRIPS["max_strips"]
    products = (
        "symmetric products whole"
        if strips == 1
        else f"symmetric products in up to {strips} strips of >= {_STRIPS['min_rows']} rows"
    )
    return f"{products}, {transposes_label()}"


def strip_bounds(n: int) -> list[int]:
    """Row boundaries of the strips an n x n symmetric result is computed in (``[0, n]``: one product)."""
    strips = max(1, min(_STRIPS["max_strips"], n // _STRIPS["min_rows"]))
    return [round(i * n / strips) for i in range(strips + 1)]


def symmetric_flop_fraction(n: int) -> float:
    """The share of a whole product's FLOPs that :func:`symmetric_matmul` spends on an n x n result."""
    bounds = strip_bounds(n)
    return sum((end - start) * (n - start) for start, end in itertools.pairwise(bounds)) / (n * n)


def _plain_sum(
    products: Sequence[tuple[Tensor, Tensor]], c: Tensor | None, beta: float, alpha: float
) -> Tensor:
    """``beta * c + alpha * sum(a @ b)`` as whole products, the product epilogues doing the sums."""
    (a, b), rest = products[0], products[1:]
    if c is not None:
        out = scaled_matmul_add(c, a, b, beta=beta, alpha=alpha)
    else:
        out = a @ b if alpha == 1.0 else (a @ b).mul_(alpha)
    for a, b in rest:
        add_matmul_(out, a, b, alpha=alpha)
    return out


def _batch(t: Tensor) -> Tensor:
    return t.reshape(-1, *t.shape[-2:])


def symmetric_matmul(
    products: Sequence[tuple[Tensor, Tensor]],
    c: Tensor | None = None,
    beta: float = 1.0,
    alpha: float = 1.0,
) -> Tensor:
    """``beta * c + alpha * sum(a @ b for a, b in products)`` for a result the caller knows is symmetric
    (per matrix of a stack of same-shaped operands; ``c`` symmetric too), such as a Gram matrix or a
    product of two polynomials in the same symmetric matrix.

    Each row strip (:func:`strip_bounds`) is multiplied out from its diagonal block rightwards only,
    straight into the result; its part left of the diagonal block is copied from the transpose of the
    column above it (:func:`pcpretrain.transpose_kernels.copy_transposed_`: coalesced tiles on CUDA).
    That leaves (k + 1) / 2k of the FLOPs for k strips. Under autograd (a product that writes into
    slices of its result cannot be differentiated) and for results too small for two strips, the whole
    products run instead.
    """
    a0 = products[0][0]
    n = a0.shape[-2]
    bounds = strip_bounds(n)
    operands = [t for pair in products for t in pair] + ([c] if c is not None else [])
    if len(bounds) == 2 or (torch.is_grad_enabled() and any(t.requires_grad for t in operands)):
        return _plain_sum(products, c, beta, alpha)
    out = torch.empty((*a0.shape[:-2], n, n), dtype=a0.dtype, device=a0.device)
    flat, flat_c = _batch(out), None if c is None else _batch(c)
    pairs = [(_batch(a), _batch(b)) for a, b in products]
    for start, end in itertools.pairwise(bounds):
        target = flat[:, start:end, start:]
        for index, (a, b) in enumerate(pairs):
            rows, cols = a[:, start:end], b[:, :, start:]
            if index > 0:
                target.baddbmm_(rows, cols, alpha=alpha)
            elif flat_c is not None:
                torch.baddbmm(flat_c[:, start:end, start:], rows, cols, beta=beta, alpha=alpha, out=target)
            else:
                target.baddbmm_(rows, cols, beta=0.0, alpha=alpha)
        if start > 0:
            copy_transposed_(flat[:, start:end, :start], flat[:, :start, start:end])
    return out
