"""Muon's elementwise work written for torch.compile, so each matrix's chain becomes one fused kernel.

Run eagerly with multi-tensor kernels, the momentum step, the Nesterov direction and the update take
about 18 passes over float32 parameter-sized data per step: the gradients are stacked (2), masked for
a non-finite step (2), the buffers scaled and added to (5), the directions formed (3), the updates
converted and masked (1.5) and the parameters decayed and stepped (5). Each kernel reads what the last
one wrote. Written here for one matrix with ``torch.where`` for the ``found_inf`` mask, inductor fuses
the chain: gradient and buffer in, buffer and direction out (3.5 passes, the direction written straight
into its row of the stack in Newton–Schulz's bf16), then parameter and low-precision update in,
parameter out (2.5). The rule and the ``found_inf`` guarantee are those of
:mod:`pcpretrain.optim.muon`'s eager functions, which the tests compare these with: a flagged step
changes nothing, and its (possibly NaN) gradients reach no state.

What is compiled is the one-matrix kernel, not the loop over a batch: a graph of a whole batch would
unroll its loop, depend on the batch's length and the learning rate, and take long to compile at
Llama-1B (such whole-batch graphs ran at 0.04 of the baseline's throughput on an H100, most likely
still compiling in the measured steps). One matrix's graph compiles in about a second; the second
shape it sees makes its sizes symbolic, and the first change of a float (the learning rate, the
decay) makes that float symbolic, so a model compiles a handful of graphs per kernel in its first two
steps and none after. Past :data:`RECOMPILE_LIMIT` graphs a kernel runs the same rule eagerly,
correct but slow; it never fails. A kernel that cannot be compiled at all (no working compiler or
Triton on the machine, a backend error) stops the step with an error that says how to run eagerly.
It does not quietly run the eager rule instead: that rounds differently from the compiled one, so
under DDP a rank that fell back alone would drift away from its replicas without anyone noticing.

The batch functions are plain PyTorch and also run eagerly (slowly); ``compiled_momentum_directions``
and ``compiled_apply_updates`` are their compiled forms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pcpretrain.errors import compile_failure_message

# Graphs each kernel may compile: a few per dtype (with and without a found_inf flag, with and without
# a direction to write, static then symbolic sizes and floats), with room for unusual models.
RECOMPILE_LIMIT = 64


def momentum_direction(
    grad: Tensor,
    buf: Tensor,
    momentum: float,
    nesterov: bool,
    found_inf: Tensor | None,
    direction: Tensor | None,
) -> None:
    """``buf <- momentum * buf + grad``, and into ``direction`` (if given) ``grad + momentum * buf``
    with Nesterov, else ``buf``; where ``found_inf`` is 1 the buffer stays and the gradient counts as 0."""
    skip = None if found_inf is None else found_inf.bool()
    if skip is not None:
        grad = torch.where(skip, 0.0, grad)
    new_buf = buf * momentum + grad
    if skip is not None:
        new_buf = torch.where(skip, buf, new_buf)
    buf.copy_(new_buf)
    if direction is not None:
        direction.copy_(grad + momentum * new_buf if nesterov else new_buf)


def apply_update(param: Tensor, update: Tensor, decay: float, step: float, found_inf: Tensor | None) -> None:
    """``param <- (1 - decay) param - step * update`` (``update`` converted to the parameter's dtype on
    the fly); nothing changes where ``found_inf`` is 1."""
    new = param * (1.0 - decay) - step * update.to(param.dtype)
    param.copy_(new if found_inf is None else torch.where(found_inf.bool(), param, new))


def per_matrix_momentum_directions(
    grads: list[Tensor],
    bufs: list[Tensor],
    momentum: float,
    nesterov: bool,
    found_inf: Tensor | None,
    rows: tuple[int, int],
    dtype: torch.dtype | None = None,
    kernel: Callable[..., None] = momentum_direction,
) -> Tensor:
    """:func:`momentum_direction` for every buffer of a batch, and the stacked directions of ``rows``
    (``(start, end)``), written by ``kernel`` (eager or compiled) into their rows of the stack, in
    ``dtype`` (default: the gradients'). Given Newton–Schulz's dtype (bf16), the kernel writes half the
    bytes, normalisation reads half, and under FSDP the directions travel in half the bytes."""
    start, end = rows
    directions = grads[0].new_empty((end - start, *grads[0].shape), dtype=dtype)
    for index, (grad, buf) in enumerate(zip(grads, bufs, strict=True)):
        row = directions[index - start] if start <= index < end else None
        kernel(grad, buf, momentum, nesterov, found_inf, row)
    return directions


def per_matrix_apply_updates(
    params: list[Tensor],
    updates: Tensor,
    decay: float,
    step: float,
    found_inf: Tensor | None,
    kernel: Callable[..., None] = apply_update,
) -> None:
    """:func:`apply_update` for each matrix of a batch and its row of the stack ``updates``."""
    for param, update in zip(params, updates.unbind(0), strict=True):
        # Detached: torch.compile keeps a Parameter's sizes static, one graph per shape.
        kernel(param.detach(), update, decay, step, found_inf)


def _compiled_batches(batch_function: Callable[..., Any], kernel: Callable[..., None]) -> Callable[..., Any]:
    """``batch_function`` calling ``kernel`` through torch.compile, under this module's recompile limit
    (torch's is global), a compilation failure raised as an error that names the setting to change."""
    compiled_kernel = torch.compile(kernel)

    @functools.wraps(batch_function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return batch_function(*args, **kwargs, kernel=compiled_kernel)
        except torch._dynamo.exc.TorchDynamoException as error:
            remedy = "set optimizer.compile=false to run the same rule eagerly (more passes over memory)"
            what = f"Muon's elementwise kernel {kernel.__name__}"
            raise RuntimeError(compile_failure_message(what, error, remedy)) from error

    return run


compiled_momentum_directions = _compiled_batches(per_matrix_momentum_directions, momentum_direction)
compiled_apply_updates = _compiled_batches(per_matrix_apply_updates, apply_update)
