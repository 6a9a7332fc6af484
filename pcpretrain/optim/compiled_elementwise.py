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
length, row slice and dtype compiles once. Unlike the multi-tensor kernels, the generated code
launches one kernel per matrix, each a full pass at memory bandwidth.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


compiled_momentum_directions = torch.compile(per_matrix_momentum_directions, fullgraph=True)
compiled_apply_updates = torch.compile(per_matrix_apply_updates, fullgraph=True)
