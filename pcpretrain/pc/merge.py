"""Fold PC layers into plain weights: the merged state dict is an ordinary Llama's."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from pcpretrain.pc.layers import PC_SUFFIXES
from pcpretrain.pc.polynomial import check_degree
from pcpretrain.pc.transform import effective_weight


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


@torch.no_grad()
def merge_state_dict(state_dict: Mapping[str, Tensor], degree: int) -> dict[str, Tensor]:
    """Fold each PC layer into a plain weight (W_eff) and drop the PC entries; the input is not modified.

    Uses the training-time effective_weight, so the merged plain Llama reproduces the PC model exactly.
    """
    check_degree(degree)
    prefixes = {k.rpartition(".")[0] for k in state_dict if k.rpartition(".")[2] in PC_SUFFIXES}
    merged: dict[str, Tensor] = {}
    for prefix in prefixes:
        keys = {leaf: _key(prefix, leaf) for leaf in ("weight", *PC_SUFFIXES)}
        missing = [k for k in keys.values() if k not in state_dict]
        if missing:
            raise KeyError(f"cannot merge PC layer {prefix!r}: state dict lacks {missing}")
        weight = state_dict[keys["weight"]]
        merged[keys["weight"]] = effective_weight(
            weight, state_dict[keys["pc_gamma"]], state_dict[keys["pc_u"]], state_dict[keys["pc_v"]], degree
        ).to(weight.dtype)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in prefixes and leaf in PC_SUFFIXES:
            continue
        out[key] = merged.get(key, value)
    return out
