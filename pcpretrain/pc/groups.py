"""PC layers grouped by shape, so the transform, its backward and the power iteration run as stacks.

The 1B model's 72 PC matrices fall into three groups (gate/up, down, o); every per-step operation
launches the kernels of one matrix per group, whatever the number of layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pcpretrain.pc.layers import PCLinear


def full_shape(weight: Tensor) -> tuple[int, ...]:
    """The whole tensor's shape, also for a ZeRO-3 partition (whose own ``shape`` is a placeholder)."""
    return tuple(getattr(weight, "ds_shape", weight.shape))


def shape_groups(modules: Sequence[PCLinear]) -> list[list[PCLinear]]:
    """Layers with the same weight shape, dtype, degree and power-iteration count, in model order."""
    groups: dict[tuple, list[PCLinear]] = {}
    for mod in modules:
        key = (full_shape(mod.weight), mod.weight.dtype, mod.degree, mod.power_iters)
        groups.setdefault(key, []).append(mod)
    return list(groups.values())


def stack_buffers(group: Sequence[PCLinear], name: str) -> Tensor:
    """The group's ``pc_u`` or ``pc_v`` buffers as one ``(B, len)`` stack (a copy)."""
    return torch.stack([getattr(mod, name) for mod in group])


def unstack_into(stack: Tensor, group: Sequence[PCLinear], name: str) -> None:
    """Copy the rows of ``stack`` back into each layer's buffer ``name``, in one multi-tensor kernel."""
    torch._foreach_copy_([getattr(mod, name) for mod in group], list(stack.unbind(0)))
