"""Model surgery: swap the targeted nn.Linear modules of a plain Llama for PC layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from pcpretrain.choices import DEFAULT_PC_TARGETS
from pcpretrain.pc.layers import PCLinear, pc_modules
from pcpretrain.pc.polynomial import check_degree
from pcpretrain.pc.step import PCStep


def apply_pc(
    model: nn.Module,
    degree: int,
    targets: Sequence[str] = DEFAULT_PC_TARGETS,
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
    # The "once before training" power iteration; every rank builds the same model, so each runs it.
    PCStep(model, per_step=False, split=False).update_spectral()
    return names
