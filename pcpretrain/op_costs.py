"""The two floors of a piece of tensor code, counted per aten op: matrix-product FLOPs and the bytes every
other op reads and writes.

A phase of a step cannot run faster than its products at the device's matmul rate, nor than its other
ops' memory traffic at the device's bandwidth. Counting both under a dispatch mode gives those floors
for any shapes, also on the ``meta`` device, where nothing is computed: the 1B model's figures come out
on a laptop. Ops that move no data (views, allocations) count nothing; an op counts every tensor it
reads once and every tensor it writes once (mutated arguments, ``out=`` arguments, fresh results).
Products with a dimension of 1 (matrix-vector, outer and dot products) count both: their FLOPs are
negligible and their traffic is what they cost, so leaving it out would hide them from the floor.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Matrix products, with the argument that holds the product's left matrix (the contraction runs over
# its last dimension).
PRODUCTS: dict[str, int] = {
    "mm": 0,
    "bmm": 0,
    "mv": 0,
    "dot": 0,
    "addmm": 1,
    "addmm_": 1,
    "baddbmm": 1,
    "baddbmm_": 1,
    "addmv": 1,
    "addmv_": 1,
}
# Ops that allocate or relabel memory without touching it. ``_unsafe_view`` is a view that autograd
# does not track as one (``is_view`` is False for it).
NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view"}
# In-place ops that overwrite their target without reading it. (Factories like ``zeros_like`` read
# nothing either: their argument gives only a shape.)
WRITE_ONLY = {"copy_", "fill_", "zero_", "normal_", "uniform_"}


def _tensor_bytes(values: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(values) if isinstance(t, torch.Tensor))


def product_flops(name: str, args: tuple[Any, ...], out: torch.Tensor) -> int:
    """FLOPs of one matrix product: 2 per multiply-add, ``out.numel()`` outputs each summing over the
    left matrix's last dimension."""
    return 2 * out.numel() * args[PRODUCTS[name]].shape[-1]


def bandwidth_bound(name: str, args: tuple[Any, ...], out: torch.Tensor) -> bool:
    """Whether a product has a dimension of 1 (matrix-vector, outer or dot product, per matrix of a
    stack): about one multiply-add per element it reads or writes, so memory traffic, not the matmul
    rate, sets its time."""
    rows, cols = (1, 1) if out.ndim == 0 else (1, out.shape[-1]) if out.ndim == 1 else out.shape[-2:]
    return min(rows, cols, args[PRODUCTS[name]].shape[-1]) == 1


def op_bytes(func: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """Bytes ``func`` reads and writes: its tensor inputs once, plus what it writes once."""
    name = func.overloadpacket.__name__
    if func.is_view or name in NO_TRAFFIC:
        return 0
    schema = func._schema
    reads, writes = [], []
    for index, argument in enumerate(schema.arguments):
        if argument.kwarg_only:
            value = kwargs.get(argument.name)
        else:
            value = args[index] if index < len(args) else kwargs.get(argument.name)
        mutated = argument.alias_info is not None and argument.alias_info.is_write
        if mutated:
            writes.append(value)
        if not (argument.is_out or (mutated and name in WRITE_ONLY) or name.endswith("_like")):
            reads.append(value)
    results = out if isinstance(out, (tuple, list)) else (out,)
    for value, returned in zip(results, schema.returns, strict=False):
        if returned.alias_info is None:
            writes.append(value)
    return _tensor_bytes(reads) + _tensor_bytes(writes)


class OpCosts(TorchDispatchMode):
    """Counts, while active, the FLOPs of matrix products and the bytes of every other op and of the
    bandwidth-bound products, in total (``flops``, ``other_bytes``) and per op name (``bytes_by_op``,
    to see which op moves the most)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.other_bytes = 0
        self.bytes_by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in PRODUCTS:
            self.flops += product_flops(name, args, out)
        if name not in PRODUCTS or bandwidth_bound(name, args, out):
            moved = op_bytes(func, args, kwargs, out)
            self.other_bytes += moved
            self.bytes_by_op[name] += moved
        return out
