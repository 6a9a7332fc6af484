"""Model surgery: swap the targeted nn.Linear modules of a plain Llama for PC layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from pcpretrain.pc.groups import shape_groups, stack_buffers, unstack_into
from pcpretrain.pc.layers import PCLinear
from pcpretrain.pc.polynomial import check_degree
from pcpretrain.pc.spectral import power_iteration_

DEFAULT_TARGETS: tuple[str, ...] = (
    "*.mlp.gate_proj",
    "*.mlp.up_proj",
    "*.mlp.down_proj",
    "*.self_attn.o_proj",
)


def pc_modules(model: nn.Module) -> list[tuple[str, PCLinear]]:
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, PCLinear)]


def apply_pc(
    model: nn.Module,
    degree: int,
    targets: Sequence[str] = DEFAULT_TARGETS,
    power_iters: int = 10,
    seed: int = 0,
) -> list[str]:
    """Swap matching nn.Linear modules for PCLinear in place and return their names.

    Every pattern must match something (a typo would otherwise silently train a plain model). u, v come
    from one generator seeded with `seed` in named_modules order, so all ranks get identical buffers.
    """
    if check_degree(degree) == 0:
        return []
    if pc_modules(model):
        raise ValueError("model already contains PC modules; apply_pc must be called once")
    linears = [name for name, mod in model.named_modules() if name and isinstance(mod, nn.Linear)]
    for pattern in targets:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in linears):
            examples = ", ".join(linears[:6]) or "<none>"
            raise ValueError(
                f"PC target pattern {pattern!r} matches no nn.Linear module; example names: {examples}"
            )
    names = [name for name in linears if any(fnmatch.fnmatchcase(name, p) for p in targets)]
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, PCLinear.from_linear(getattr(parent, attr), degree, power_iters, generator))
    update_spectral_estimates(model)  # the "once before training" power iteration
    return names


@torch.no_grad()
def update_spectral_estimates(model: nn.Module) -> None:
    """Refresh u, v of every PC layer of an unsharded model in this process, one stack per shape."""
    for group in shape_groups([mod for _, mod in pc_modules(model)]):
        u, v = stack_buffers(group, "pc_u"), stack_buffers(group, "pc_v")
        power_iteration_(torch.stack([mod.weight for mod in group]), u, v, group[0].power_iters)
        unstack_into(u, group, "pc_u")
        unstack_into(v, group, "pc_v")
