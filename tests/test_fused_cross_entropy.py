"""The chunked LM-head cross-entropy equals the unfused expression, in value and in both gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pcpretrain.fused_cross_entropy import linear_cross_entropy

ROWS, DIM, VOCAB = 13, 8, 29


def inputs(dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, DIM, generator=generator, dtype=dtype).requires_grad_(True)
    weight = torch.randn(VOCAB, DIM, generator=generator, dtype=dtype).requires_grad_(True)
    targets = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    return hidden, weight, targets


def plain(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets)


def loss_and_grads(loss_fn, hidden: Tensor, weight: Tensor, targets: Tensor, scale: float = 1.0):
    hidden.grad = weight.grad = None
    loss = loss_fn(hidden, weight, targets)
    (loss * scale).backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("chunk", [1, 4, 5, ROWS, 100])  # 4 and 5 do not divide 13; 100 exceeds it
def test_float64_loss_and_gradients_equal_autograd_of_the_unfused_expression(chunk: int) -> None:
    hidden, weight, targets = inputs(torch.float64)
    reference = loss_and_grads(lambda h, w, t: F.cross_entropy(h @ w.T, t), hidden, weight, targets)
    fused = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk), hidden, weight, targets)
    assert fused[0].dtype == torch.float64
    for got, expected in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_float32_matches_the_plain_path() -> None:
    hidden, weight, targets = inputs(torch.float32)
    reference = loss_and_grads(plain, hidden, weight, targets)
    fused = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, 4), hidden, weight, targets)
    for got, expected in zip(fused, reference, strict=True):
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden_dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast_matches_the_plain_path_and_returns_grads_in_the_input_dtypes(
    hidden_dtype: torch.dtype,
) -> None:
    hidden, weight, targets = inputs(torch.float32)
    hidden = hidden.detach().to(hidden_dtype).requires_grad_(True)

    def under_autocast(loss_fn):
        def run(h: Tensor, w: Tensor, t: Tensor) -> Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return loss_fn(h, w, t)

        return run

    reference = loss_and_grads(under_autocast(plain), hidden, weight, targets)
    fused = loss_and_grads(
        under_autocast(lambda h, w, t: linear_cross_entropy(h, w, t, 4)), hidden, weight, targets
    )
    assert fused[0].dtype == torch.float32 and fused[1].dtype == hidden_dtype
    assert fused[2].dtype == torch.float32
    # The logits are bf16 in both; the fused path sums per-chunk bf16 weight gradients in float32.
    torch.testing.assert_close(fused[0], reference[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused[1], reference[1], rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(fused[2], reference[2], rtol=2e-2, atol=2e-3)


def test_bf16_hidden_with_float32_weight_outside_autocast_computes_in_float32() -> None:
    hidden, weight, targets = inputs(torch.float32)
    low = hidden.detach().bfloat16().requires_grad_(True)
    reference = loss_and_grads(plain, low.detach().float().requires_grad_(True), weight, targets)
    fused = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, 4), low, weight, targets)
    assert fused[1].dtype == torch.bfloat16
    torch.testing.assert_close(fused[0], reference[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[1], reference[1].bfloat16())
    torch.testing.assert_close(fused[2], reference[2], rtol=1e-5, atol=1e-6)


def test_a_non_unit_incoming_gradient_scales_both_gradients() -> None:
    hidden, weight, targets = inputs(torch.float64)
    once = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, 4), hidden, weight, targets)
    thrice = loss_and_grads(
        lambda h, w, t: linear_cross_entropy(h, w, t, 4), hidden, weight, targets, scale=3.0
    )
    torch.testing.assert_close(thrice[1], 3 * once[1], rtol=0, atol=1e-14)
    torch.testing.assert_close(thrice[2], 3 * once[2], rtol=0, atol=1e-14)


def test_only_the_inputs_that_require_grad_get_one() -> None:
    hidden, weight, targets = inputs(torch.float64)
    frozen = weight.detach()
    linear_cross_entropy(hidden, frozen, targets, 4).backward()
    expected = torch.autograd.grad(F.cross_entropy(hidden @ frozen.T, targets), hidden)[0]
    torch.testing.assert_close(hidden.grad, expected, rtol=0, atol=1e-12)
    assert frozen.grad is None


@pytest.mark.parametrize("grad_off", ["no_grad", "inputs_without_grad"])
def test_without_gradients_the_same_loss_is_computed_and_nothing_is_saved(grad_off: str) -> None:
    hidden, weight, targets = inputs(torch.float32)
    expected = plain(hidden, weight, targets).detach()
    if grad_off == "inputs_without_grad":
        hidden, weight = hidden.detach(), weight.detach()
    saved: list[torch.Size] = []
    with (
        torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t),
        torch.set_grad_enabled(grad_off != "no_grad"),
    ):
        loss = linear_cross_entropy(hidden, weight, targets, 4)
    assert loss.grad_fn is None and not loss.requires_grad
    assert saved == []
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_bad_arguments_are_refused_with_the_shapes_named() -> None:
    hidden, weight, targets = inputs(torch.float32)
    with pytest.raises(ValueError, match=r"hidden \(13, 8\) and weight \(29, 7\)"):
        linear_cross_entropy(hidden, weight[:, :7], targets, 4)
    with pytest.raises(ValueError, match=r"expected 13 targets .* got \(12,\)"):
        linear_cross_entropy(hidden, weight, targets[:12], 4)
    with pytest.raises(ValueError, match="chunk_tokens must be positive, got 0"):
        linear_cross_entropy(hidden, weight, targets, 0)
    with pytest.raises(ValueError, match="zero rows"):
        linear_cross_entropy(hidden[:0], weight, targets[:0], 4)
