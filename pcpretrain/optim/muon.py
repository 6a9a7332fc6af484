"""One optimizer for the whole model: Muon for hidden matrices, AdamW for every other parameter.

Each param group says which rule it follows with ``use_muon``. The per-parameter maths lives in plain
functions (:func:`muon_update`, :func:`apply_muon_update`, :func:`adamw_update`) so that a data-parallel
subclass can orthogonalise only its share of the matrices, all-gather the results and apply them with
the same code, overriding :meth:`Muon._muon_group_step` alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from pcpretrain.optim.newton_schulz import coefficient_set, orthogonalize

LR_ADJUSTMENTS = ("moonlight", "spectral_mup", "original")
NS_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """Rows and columns Muon sees: the leading dimension against all the others flattened."""
    return shape[0], math.prod(shape[1:])


def adjusted_lr(lr: float, shape: Sequence[int], mode: str) -> float:
    """Scale ``lr`` for a matrix of ``shape`` so Muon's unit-spectral-norm update has a sensible size.

    ``moonlight`` (0.2 sqrt(max(rows, cols))) matches AdamW's update RMS, so AdamW learning rates
    transfer; ``spectral_mup`` (sqrt(rows / cols)) is the spectral-norm muP scaling; ``original``
    (sqrt(max(1, rows / cols))) is the Muon reference's.
    """
    rows, cols = matrix_shape(shape)
    if mode == "moonlight":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if mode == "spectral_mup":
        return lr * math.sqrt(rows / cols)
    if mode == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    raise ValueError(f"unknown lr_adjust {mode!r}; choose one of {list(LR_ADJUSTMENTS)}")


def nesterov_direction(grad: Tensor, buf: Tensor, group: dict[str, Any]) -> Tensor:
    """Momentum step into ``buf`` (in place); the Nesterov (or plain momentum) direction to orthogonalise."""
    momentum = group["momentum"]
    buf.mul_(momentum).add_(grad)
    return grad.add(buf, alpha=momentum) if group["nesterov"] else buf


def orthogonalized_update(direction: Tensor, group: dict[str, Any]) -> Tensor:
    """Newton–Schulz of the direction seen as a matrix, in its own shape, not yet scaled by any lr.

    This is the expensive part, the one a data-parallel rank computes for its share of the matrices.
    """
    ortho = orthogonalize(
        direction.reshape(matrix_shape(direction.shape)),
        steps=group["ns_steps"],
        coefficients=group["coefficients"],
        dtype=NS_DTYPES[group["ns_dtype"]],
    )
    return ortho.reshape(direction.shape)


def muon_update(grad: Tensor, buf: Tensor, group: dict[str, Any]) -> Tensor:
    """Momentum step into ``buf`` (in place), then the orthogonalised update in ``grad``'s shape."""
    return orthogonalized_update(nesterov_direction(grad, buf, group), group)


def apply_muon_update(param: Tensor, update: Tensor, group: dict[str, Any]) -> None:
    """Decoupled weight decay with the group lr, then the shape-adjusted step along ``-update``."""
    lr = group["lr"]
    param.mul_(1.0 - lr * group["weight_decay"])
    param.add_(update.to(param.dtype), alpha=-adjusted_lr(lr, param.shape, group["lr_adjust"]))


def adamw_update(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One bias-corrected AdamW step with decoupled weight decay, as ``torch.optim.AdamW`` computes it."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    state["step"] += 1
    step = float(state["step"])
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    param.mul_(1.0 - lr * group["weight_decay"])
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**step)).add_(group["eps"])
    param.addcdiv_(exp_avg, denom, value=-lr / (1.0 - beta1**step))


def _param_names(group: dict[str, Any]) -> list[str]:
    """Names for error messages: a ``names`` key, torch's own ``param_names``, else positions."""
    names = group.get("names") or group.get("param_names")
    return list(names) if names else [f"params[{i}]" for i in range(len(group["params"]))]


def _validate_muon_group(group: dict[str, Any]) -> None:
    """Fail at construction, naming the culprit, instead of deep inside the first step."""
    coefficient_set(group["coefficients"])
    if group["ns_dtype"] not in NS_DTYPES:
        raise ValueError(f"unknown ns_dtype {group['ns_dtype']!r}; choose one of {list(NS_DTYPES)}")
    if group["lr_adjust"] not in LR_ADJUSTMENTS:
        raise ValueError(f"unknown lr_adjust {group['lr_adjust']!r}; choose one of {list(LR_ADJUSTMENTS)}")
    if group["ns_steps"] < 1:
        raise ValueError(f"ns_steps must be >= 1, got {group['ns_steps']}")
    for name, p in zip(_param_names(group), group["params"], strict=True):
        if p.ndim < 2:
            raise ValueError(
                f"Muon needs matrices but {name} has shape {tuple(p.shape)}; put it in a use_muon=False group"
            )


class Muon(torch.optim.Optimizer):
    """Muon on ``use_muon=True`` groups, AdamW on ``use_muon=False`` groups.

    Keyword arguments are the defaults for every group; a group overrides any of them. Muon groups use
    ``lr, momentum, nesterov, ns_steps, coefficients, ns_dtype, lr_adjust, weight_decay``; AdamW groups
    use ``lr, betas, eps, weight_decay``. Every group must say ``use_muon`` explicitly, so routing is
    always a visible decision. State: ``momentum_buffer`` (Muon); ``step``, ``exp_avg``,
    ``exp_avg_sq`` (AdamW, laid out as in ``torch.optim.AdamW``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        coefficients: str = "simple",
        ns_dtype: str = "bfloat16",
        lr_adjust: str = "moonlight",
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            coefficients=coefficients,
            ns_dtype=ns_dtype,
            lr_adjust=lr_adjust,
            betas=tuple(betas),
            eps=eps,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking it declares ``use_muon`` and, for Muon, holds only matrices."""
        if not isinstance(param_group, dict) or "use_muon" not in param_group:
            raise ValueError("every Muon param group must be a dict with a 'use_muon' key (True or False)")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["use_muon"]:
            try:
                _validate_muon_group(group)
            except ValueError:
                self.param_groups.pop()
                raise

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Update every group with its own rule; a thin loop so subclasses can replace the Muon part."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group_step(group)
            else:
                self._adamw_group_step(group)
        return loss

    def _muon_group_step(self, group: dict[str, Any]) -> None:
        """Orthogonalise and apply each matrix's update locally (the single-device case)."""
        for p in group["params"]:
            if p.grad is not None:
                apply_muon_update(p, muon_update(p.grad, self._momentum_buffer(p), group), group)

    def _adamw_group_step(self, group: dict[str, Any]) -> None:
        """Plain AdamW over the group's parameters."""
        for p in group["params"]:
            if p.grad is not None:
                adamw_update(p, p.grad, self._adamw_state(p), group)

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        """The parameter's momentum buffer, created as zeros in its dtype on first use."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]

    def _adamw_state(self, p: Tensor) -> dict[str, Any]:
        """AdamW moments and a float32 step counter on the CPU, as ``torch.optim.AdamW`` keeps them."""
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
