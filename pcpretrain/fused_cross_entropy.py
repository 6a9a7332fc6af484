"""Mean cross-entropy of ``hidden @ weight.T`` against targets, a chunk of rows at a time.

The plain LM-head loss materialises all N x V logits, a float32 copy of them, and the softmax that
autograd keeps for the backward: gigabytes at 1B scale. Here a chunk's logits exist only while that
chunk is processed; when gradients are wanted they are computed in the same pass and stored, so the
backward needs no logits and the total matmul work equals that of the plain forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pcpretrain.pc.precision import compute_dtype


# Eager even inside a compiled module (regional compilation compiles lm_head): a compiled graph would
# functionalise the in-place softmax and could hold several chunks' logits at once.
@torch.compiler.disable
def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:
    """``F.cross_entropy(F.linear(hidden, weight).float(), targets)`` without the full logits.

    ``hidden`` is N x d, ``weight`` V x d, ``targets`` N class indices; the result is a float32 scalar
    (float64 for float64 inputs) whose gradients reach ``hidden`` and ``weight`` as autograd's would.
    Under autocast the logits and gradient matmuls run in the autocast dtype, exactly as ``nn.Linear``'s
    would; each chunk is upcast to float32 for the softmax so bf16 does not bias the loss.
    """
    _check_arguments(hidden, weight, targets, chunk_tokens)
    # Decided here: inside Function.forward grad mode is always off.
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens)
    return _chunked_pass(hidden, weight, targets, chunk_tokens, hidden_grad=False, weight_grad=False).loss


class _LinearCrossEntropy(torch.autograd.Function):
    """Gradients computed during the forward and only scaled by the incoming gradient in the backward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:
        result = _chunked_pass(
            hidden,
            weight,
            targets,
            chunk_tokens,
            hidden_grad=ctx.needs_input_grad[0],
            weight_grad=ctx.needs_input_grad[1],
        )
        ctx.save_for_backward(result.grad_hidden, result.grad_weight)
        return result.loss

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return _scaled(grad_hidden, grad_output), _scaled(grad_weight, grad_output), None, None


def _scaled(grad: Tensor | None, grad_output: Tensor) -> Tensor | None:
    """``grad * grad_output`` in the loss's precision, so a bf16 gradient is not scaled by a bf16-rounded
    factor (gradient accumulation passes 1/k)."""
    return None if grad is None else (grad.to(grad_output.dtype) * grad_output).to(grad.dtype)


@dataclass
class _PassResult:
    loss: Tensor
    grad_hidden: Tensor | None
    grad_weight: Tensor | None


def _chunked_pass(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    chunk_tokens: int,
    *,
    hidden_grad: bool,
    weight_grad: bool,
) -> _PassResult:
    """The loss and, where asked, d(loss)/d(hidden) and d(loss)/d(weight) for an incoming gradient of 1."""
    rows = hidden.shape[0]
    hidden_op, weight_op = _matmul_operands(hidden, weight)
    grad_hidden = torch.empty_like(hidden) if hidden_grad else None
    # Summed over chunks, so kept in float32 (or wider) whatever dtype the matmuls produce.
    grad_weight = (
        torch.zeros(weight.shape, dtype=compute_dtype(weight.dtype), device=weight.device)
        if weight_grad
        else None
    )
    loss_sum = hidden.new_zeros(
        (), dtype=compute_dtype(torch.promote_types(hidden_op.dtype, weight_op.dtype))
    )
    for start in range(0, rows, chunk_tokens):
        rows_slice = slice(start, start + chunk_tokens)
        loss_sum += _chunk(
            hidden_op[rows_slice],
            weight_op,
            targets[rows_slice],
            rows,
            None if grad_hidden is None else grad_hidden[rows_slice],
            grad_weight,
        )
    return _PassResult(
        loss=loss_sum / rows,
        grad_hidden=grad_hidden,
        grad_weight=None if grad_weight is None else grad_weight.to(weight.dtype),
    )


def _chunk(
    chunk: Tensor,
    weight: Tensor,
    targets: Tensor,
    rows: int,
    grad_hidden: Tensor | None,
    grad_weight: Tensor | None,
) -> Tensor:
    """The chunk's summed loss; writes its rows of ``grad_hidden`` and adds its share to ``grad_weight``.

    A function of its own so that the chunk's vocabulary-wide buffers are freed on return, before the
    next chunk's are allocated.
    """
    targets = targets[:, None]
    logits = F.linear(chunk, weight)
    matmul_dtype = logits.dtype
    logits = logits.to(compute_dtype(matmul_dtype))
    target_logits = logits.gather(1, targets)
    max_logits = logits.amax(dim=-1, keepdim=True)
    # In place, so the chunk never needs a second float32 buffer: exp(logits - max) from here on.
    exp_logits = logits.sub_(max_logits).exp_()
    sum_exp = exp_logits.sum(dim=-1, keepdim=True)
    loss = (sum_exp.log() + max_logits - target_logits).sum()
    if grad_hidden is None and grad_weight is None:
        return loss
    # d(mean loss)/d(logits) = (softmax - onehot) / N, again in place; then in the matmul dtype, as the
    # gradient autograd would pass back through the upcast.
    grad_logits = exp_logits.div_(sum_exp * rows)
    grad_logits.scatter_add_(1, targets, grad_logits.new_full(targets.shape, -1.0 / rows))
    grad_logits = grad_logits.to(matmul_dtype)
    if grad_hidden is not None:
        grad_hidden.copy_(grad_logits @ weight)
    if grad_weight is not None:
        grad_weight += grad_logits.T @ chunk
    return loss


def _matmul_operands(hidden: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Autocast casts the operands itself, as for ``nn.Linear``; without it, both take the wider dtype."""
    if torch.is_autocast_enabled(hidden.device.type):
        return hidden, weight
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    return hidden.to(dtype), weight.to(dtype)


def _check_arguments(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_tokens: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden N x d and weight V x d, got hidden {tuple(hidden.shape)} and weight "
            f"{tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected {hidden.shape[0]} targets (one per row of hidden), got {tuple(targets.shape)}"
        )
    if hidden.shape[0] == 0:
        raise ValueError("the mean cross-entropy of zero rows is undefined; hidden has no rows")
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
