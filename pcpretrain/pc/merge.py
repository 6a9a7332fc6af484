"""Fold PC layers into plain weights: the merged state dict is an ordinary Llama's."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from pcpretrain.pc.layers import PC_SUFFIXES
from pcpretrain.pc.polynomial import check_degree
from pcpretrain.pc.spectral import spectral_norm_estimate
from pcpretrain.pc.transform import effective_weight


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def _pc_prefixes(state_dict: Mapping[str, Tensor]) -> set[str]:
    return {k.rpartition(".")[0] for k in state_dict if k.rpartition(".")[2] in PC_SUFFIXES}


@torch.no_grad()
def pc_layer_scales(state_dict: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per PC layer (by module name) its ``gamma`` and spectral-norm estimate ``sigma``: what merging folds
    into the weight and what an analysis of the merged model needs to tell W_eff / gamma apart."""
    scales = {}
    for prefix in sorted(_pc_prefixes(state_dict)):
        weight = state_dict[_key(prefix, "weight")]
        u, v = state_dict[_key(prefix, "pc_u")], state_dict[_key(prefix, "pc_v")]
        sigma = spectral_norm_estimate(weight.to(u.dtype), u, v)
        gamma = float(state_dict[_key(prefix, "pc_gamma")].reshape(()))
        scales[prefix] = {"gamma": gamma, "sigma": float(sigma)}
    return scales


@torch.no_grad()
def merge_state_dict(state_dict: Mapping[str, Tensor], degree: int) -> dict[str, Tensor]:
    """Fold each PC layer into a plain weight (W_eff) and drop the PC entries; the input is not modified.

    Uses the training-time effective_weight, so the merged plain Llama reproduces the PC model exactly.
    """
    check_degree(degree)
    prefixes = _pc_prefixes(state_dict)
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
