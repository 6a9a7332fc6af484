"""One optimizer for the whole model: Muon for hidden matrices, AdamW for every other parameter.

Each param group says which rule it follows with ``use_muon``. A group's parameters are updated in
batches, never one by one: Muon stacks the matrices of one (shape, dtype, device) and runs a single
batched Newton–Schulz chain on the stack, and both rules do their elementwise work with multi-tensor
``torch._foreach_*`` kernels, so the kernels launched per step grow with the number of distinct
shapes, not with the number of matrices (Muon's compiled elementwise work, an option, launches one
fused kernel per matrix instead). The price is memory: a whole batch's directions and its
Newton–Schulz intermediates exist at once. State stays per parameter (``momentum_buffer``; AdamW's
``step``, ``exp_avg``, ``exp_avg_sq``), so checkpoints do not depend on the batching.

A data-parallel subclass changes where Newton–Schulz runs by overriding :meth:`Muon._batch_updates`
and which directions it needs by :meth:`Muon._direction_rows` (and :meth:`Muon._local` for sharded
parameters); the momentum step and the update stay here, eager or compiled
(:mod:`pcpretrain.optim.compiled_elementwise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw as fused_adamw

from pcpretrain.choices import NS_DTYPES as NS_DTYPE_NAMES
from pcpretrain.choices import NS_METHODS
from pcpretrain.optim.compiled_elementwise import compiled_apply_updates, compiled_momentum_directions
from pcpretrain.optim.newton_schulz import coefficient_set, orthogonalize

LR_ADJUSTMENTS = ("moonlight", "spectral_mup", "original")
NS_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in NS_DTYPE_NAMES}


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


def batches(params: Iterable[Tensor], key: Callable[[Tensor], Hashable]) -> list[list[Tensor]]:
    """The parameters that have a gradient, grouped by ``key`` in first-seen order.

    The order depends only on the parameter list, so every data-parallel rank forms the same batches.
    """
    grouped: dict[Hashable, list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            grouped.setdefault(key(p), []).append(p)
    return list(grouped.values())


def stacked_finite(grads: list[Tensor], found_inf: Tensor | None) -> Tensor:
    """The batch's gradients as one ``(B, *shape)`` stack, all zeros where ``found_inf`` is 1 (decided on
    the device, no host read), so that a skipped step carries no NaN or infinity into any state."""
    stack = torch.stack(grads)
    if found_inf is not None:
        stack.masked_fill_(found_inf.bool(), 0)
    return stack


def momentum_step(grads: Tensor, bufs: list[Tensor], momentum: float, found_inf: Tensor | None) -> None:
    """``buf <- momentum * buf + grad`` for every buffer (``grads`` a stack), in two multi-tensor kernels;
    buffers unchanged where ``found_inf`` is 1 (its gradients are then zeros, see :func:`stacked_finite`)."""
    torch._foreach_mul_(bufs, momentum if found_inf is None else momentum + (1.0 - momentum) * found_inf)
    torch._foreach_add_(bufs, list(grads.unbind(0)))


def stacked_directions(grads: Tensor, bufs: list[Tensor], momentum: float, nesterov: bool) -> Tensor:
    """The Nesterov (or plain momentum) directions as one ``(B, *shape)`` stack. Nesterov's are written
    into the ``grads`` stack itself (``grad + momentum * buf``), which is not needed afterwards."""
    if not nesterov:
        return torch.stack(bufs)
    torch._foreach_add_(list(grads.unbind(0)), bufs, alpha=momentum)
    return grads


def momentum_directions(
    grads: list[Tensor],
    bufs: list[Tensor],
    momentum: float,
    nesterov: bool,
    found_inf: Tensor | None,
    rows: tuple[int, int],
) -> Tensor:
    """The momentum step for every buffer, then the stacked directions of the matrices in ``rows``
    (``(start, end)``: a data-parallel rank needs only its own slice), with multi-tensor kernels.

    :func:`pcpretrain.optim.compiled_elementwise.per_matrix_momentum_directions` is the same rule,
    written for torch.compile.
    """
    stack = stacked_finite(grads, found_inf)
    momentum_step(stack, bufs, momentum, found_inf)
    start, end = rows
    if start == end:
        return stack[start:end]
    return stacked_directions(stack[start:end], bufs[start:end], momentum, nesterov)


def orthogonalize_stack(stack: Tensor, group: dict[str, Any]) -> Tensor:
    """Newton–Schulz of every matrix of a ``(B, *shape)`` stack in one batched chain, not yet scaled by lr.

    Each ``shape`` is seen as the matrix :func:`matrix_shape` gives; this is the expensive part, the one
    a data-parallel rank runs on its slice of the stack only. The result stays in the iteration's dtype
    (the update applies it without a separate conversion pass).
    """
    dtype = NS_DTYPES[group["ns_dtype"]]
    ortho = orthogonalize(
        stack.reshape(stack.shape[0], *matrix_shape(stack.shape[1:])),
        steps=group["ns_steps"],
        coefficients=group["coefficients"],
        dtype=dtype,
        out_dtype=dtype,
        method=group["ns_method"],
    )
    return ortho.reshape(stack.shape)


def apply_muon_updates(
    params: list[Tensor], updates: Tensor, decay: float, step: float, found_inf: Tensor | None = None
) -> None:
    """``param <- (1 - decay) param - step * updates[i]`` for ``params[i]``, neither where ``found_inf``
    is 1. The conversion of ``updates`` to the parameters' dtype and the ``found_inf`` mask are one pass.

    :func:`pcpretrain.optim.compiled_elementwise.per_matrix_apply_updates` is the same rule, written
    for torch.compile.
    """
    if found_inf is None:
        steps = updates.to(params[0].dtype)
    else:
        keep = 1.0 - found_inf
        decay = decay * keep
        steps = torch.empty(updates.shape, dtype=params[0].dtype, device=updates.device)
        torch.mul(updates, keep.to(steps.dtype), out=steps)
    torch._foreach_mul_(params, 1.0 - decay)
    torch._foreach_add_(params, list(steps.unbind(0)), alpha=-step)


def adamw_step(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    group: dict[str, Any],
    found_inf: Tensor | None = None,
) -> None:
    """torch's fused AdamW kernel over the batch: one launch, and a step skipped on the device where
    ``found_inf`` is 1 (parameters, moments and step counters all left as they were)."""
    beta1, beta2 = group["betas"]
    fused_adamw(
        params,
        grads,
        [state["exp_avg"] for state in states],
        [state["exp_avg_sq"] for state in states],
        [],
        [state["step"] for state in states],
        fused=True,
        found_inf=found_inf,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
    )


def _param_names(group: dict[str, Any]) -> list[str]:
    """Names for error messages: a ``names`` key, torch's own ``param_names``, else positions."""
    names = group.get("names") or group.get("param_names")
    return list(names) if names else [f"params[{i}]" for i in range(len(group["params"]))]


def _validate_muon_group(group: dict[str, Any]) -> None:
    """Fail at construction, naming the culprit, instead of deep inside the first step."""
    coefficient_set(group["coefficients"])
    if group["ns_dtype"] not in NS_DTYPES:
        raise ValueError(f"unknown ns_dtype {group['ns_dtype']!r}; choose one of {list(NS_DTYPES)}")
    if group["ns_method"] not in NS_METHODS:
        raise ValueError(f"unknown ns_method {group['ns_method']!r}; choose one of {list(NS_METHODS)}")
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
    ``lr, momentum, nesterov, ns_steps, coefficients, ns_dtype, ns_method, lr_adjust, weight_decay``;
    AdamW groups use ``lr, betas, eps, weight_decay``. Every group must say ``use_muon`` explicitly, so
    routing is always a visible decision. State: ``momentum_buffer`` (Muon); ``step``, ``exp_avg``,
    ``exp_avg_sq`` (AdamW, laid out as in ``torch.optim.AdamW(fused=True)``, which runs them).

    Like torch's fused optimizers, :meth:`step` honours a ``found_inf`` attribute (a 0-d float tensor on
    the parameters' device): where it is 1 the step changes nothing, decided on the device, so the
    host never has to wait for the gradients to know whether to step.

    ``compile_elementwise=True`` runs the momentum step, the directions and the update through
    torch.compile (:mod:`pcpretrain.optim.compiled_elementwise`): fewer passes over memory, at the cost
    of compiling them on the first steps.
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
        ns_method: str = "standard",
        lr_adjust: str = "moonlight",
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        compile_elementwise: bool = False,
    ) -> None:
        self.compile_elementwise = compile_elementwise
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            coefficients=coefficients,
            ns_dtype=ns_dtype,
            ns_method=ns_method,
            lr_adjust=lr_adjust,
            betas=tuple(betas),
            eps=eps,
            # The AdamW groups run torch's fused kernel: torch's state loading then keeps their step
            # counters on the parameters' device, where that kernel needs them.
            fused=True,
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
        """Update every group with its own rule."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group_step(group, found_inf)
            else:
                self._adamw_group_step(group, found_inf)
        return loss

    def _muon_group_step(self, group: dict[str, Any], found_inf: Tensor | None = None) -> None:
        """Momentum, one Newton–Schulz chain and the update per batch of same-shape matrices."""
        apply = compiled_apply_updates if self.compile_elementwise else apply_muon_updates
        lr = group["lr"]
        for params in batches(group["params"], self._batch_key):
            grads = [self._local(p.grad) for p in params]
            bufs = [self._local(self._momentum_buffer(p)) for p in params]
            directions = self._directions(grads, bufs, group, found_inf, self._direction_rows(params))
            updates = self._batch_updates(params, directions, group)
            step = adjusted_lr(lr, params[0].shape, group["lr_adjust"])
            apply([self._local(p) for p in params], updates, lr * group["weight_decay"], step, found_inf)

    def _directions(
        self,
        grads: list[Tensor],
        bufs: list[Tensor],
        group: dict[str, Any],
        found_inf: Tensor | None,
        rows: tuple[int, int],
    ) -> Tensor:
        """The batch's momentum step and the directions of ``rows``: one fused kernel per matrix that
        writes them in the iteration's dtype when compiled, multi-tensor kernels (in the gradients'
        dtype, converted while normalising) otherwise."""
        rule = (grads, bufs, group["momentum"], group["nesterov"], found_inf, rows)
        if self.compile_elementwise:
            return compiled_momentum_directions(*rule, dtype=NS_DTYPES[group["ns_dtype"]])
        return momentum_directions(*rule)

    def _batch_key(self, p: Tensor) -> Hashable:
        """What matrices must share to be stacked into one Newton–Schulz batch."""
        return tuple(p.shape), p.dtype, p.device

    def _local(self, tensor: Tensor) -> Tensor:
        """The tensor the kernels work on: the tensor itself here, a subclass may give a local shard."""
        return tensor

    def _direction_rows(self, params: list[Tensor]) -> tuple[int, int]:
        """The matrices of a batch whose directions :meth:`_batch_updates` needs: all of them here."""
        return 0, len(params)

    def _batch_updates(self, params: list[Tensor], directions: Tensor, group: dict[str, Any]) -> Tensor:
        """The batch's orthogonalised updates, a stack like the whole batch's gradients, from the
        :meth:`_direction_rows` directions (which they may overwrite): one chain here."""
        return orthogonalize_stack(directions, group)

    def _adamw_group_step(self, group: dict[str, Any], found_inf: Tensor | None = None) -> None:
        """AdamW over the group, one batch per dtype and device so the fused kernel applies."""
        for params in batches(group["params"], lambda p: (p.dtype, p.device)):
            states = [self._adamw_state(p) for p in params]
            adamw_step(params, [p.grad for p in params], states, group, found_inf)

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        """The parameter's momentum buffer, created as zeros in its dtype on first use."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["momentum_buffer"]

    def _adamw_state(self, p: Tensor) -> dict[str, Any]:
        """AdamW moments and a float32 step counter on the parameter's device, as the fused
        ``torch.optim.AdamW`` keeps them."""
        state = self.state[p]
        if "step" in state and state["step"].device != p.device:
            # A checkpoint written before the fused kernel kept its counters on the CPU.
            state["step"] = state["step"].to(p.device)
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
