"""Muon's elementwise work written for torch.compile, so each matrix's chain becomes one fused kernel.

Run eagerly with multi-tensor kernels, the momentum step, the Nesterov direction and the update take
about 18 passes over float32 parameter-sized data per step: the gradients are stacked (2), masked for
a non-finite step (2), the buffers scaled and added to (5), the directions formed (3), the updates
converted and masked (1.5) and the parameters decayed and stepped (5). Each kernel reads what the last
one wrote. Written here per matrix with ``torch.where`` for the ``found_inf`` mask, inductor fuses
each matrix's chain: gradient and buffer in, buffer and direction out (4 passes), then parameter and
low-precision update in, parameter out (2.5). The rule and the ``found_inf`` guarantee are those of
:mod:`pcpretrain.optim.muon`'s eager functions, which the tests compare these with: a flagged step
changes nothing, and its (possibly NaN) gradients reach no state.

The functions are plain PyTorch and also run eagerly (slowly); ``compiled_momentum_directions`` and
``compiled_apply_updates`` are their compiled forms. Floats (learning rate, decay) are traced as
symbols after their first change, so a learning-rate schedule does not recompile; each distinct list
length, row slice and dtype compiles once, so a model with many matrix shapes compiles more graphs
than torch's default limit of 8 per function (:data:`RECOMPILE_LIMIT` here). Past that limit a batch
runs the same functions eagerly, correct but slow; it never fails. Unlike the multi-tensor kernels, the
generated code launches one kernel per matrix, each a full pass at memory bandwidth.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# Graphs each function may compile: about two per batch of same-shaped matrices (batch size, this
# rank's rows, with and without a found_inf flag), with room for the many shapes of unusual models.
RECOMPILE_LIMIT = 64


def per_matrix_momentum_directions(
    grads: list[Tensor],
    bufs: list[Tensor],
    momentum: float,
    nesterov: bool,
    found_inf: Tensor | None,
    rows: tuple[int, int],
) -> Tensor:
    """``buf <- momentum * buf + grad`` for every buffer, and the stacked directions of ``rows``
    (``grad + momentum * buf`` with Nesterov, else ``buf``); where ``found_inf`` is 1 the buffers
    stay as they were and the gradients count as zeros."""
    skip = None if found_inf is None else found_inf.bool()
    start, end = rows
    directions = []
    for index, (grad, buf) in enumerate(zip(grads, bufs, strict=True)):
        if skip is not None:
            grad = torch.where(skip, 0.0, grad)
        new_buf = buf * momentum + grad
        if skip is not None:
            new_buf = torch.where(skip, buf, new_buf)
        buf.copy_(new_buf)
        if start <= index < end:
            directions.append(grad + momentum * new_buf if nesterov else new_buf)
    if not directions:
        return grads[0].new_empty((0, *grads[0].shape))
    return torch.stack(directions)


def per_matrix_apply_updates(
    params: list[Tensor], updates: Tensor, decay: float, step: float, found_inf: Tensor | None
) -> None:
    """``param <- (1 - decay) param - step * update`` for each matrix (``updates`` a stack, converted
    to the parameters' dtype on the fly); nothing changes where ``found_inf`` is 1."""
    for param, update in zip(params, updates.unbind(0), strict=True):
        new = param * (1.0 - decay) - step * update.to(param.dtype)
        param.copy_(new if found_inf is None else torch.where(found_inf.bool(), param, new))


def _compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` through torch.compile, under this module's recompile limit (torch's is global)."""
    compiled = torch.compile(function)

    @functools.wraps(function)
    def run(*args: Any) -> Any:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args)

    return run


compiled_momentum_directions = _compiled(per_matrix_momentum_directions)
compiled_apply_updates = _compiled(per_matrix_apply_updates)
