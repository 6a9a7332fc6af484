"""The fused, chunked loss through the model equals the plain all-logits loss, and never saves all logits."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from pcpretrain import pc
from pcpretrain.config import ModelConfig
from pcpretrain.model import build_model, llama_config
from pcpretrain.train.loss import causal_lm_loss

VOCAB = 97
MODEL = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, max_seq_len=64)
WINDOWS = torch.randint(0, VOCAB, (3, 21), generator=torch.Generator().manual_seed(0))


def make_model(pc_degree: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(MODEL, VOCAB)
    pc.apply_pc(model, pc_degree)
    return model


def loss_and_grads(model: torch.nn.Module, chunk_tokens: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = causal_lm_loss(model, WINDOWS, chunk_tokens)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("pc_degree", [0, 2])
@pytest.mark.parametrize("chunk_tokens", [7, 60, 4096])  # 60 = all tokens; 7 leaves a short last chunk
def test_chunked_loss_equals_the_plain_loss_in_value_and_every_gradient(
    pc_degree: int, chunk_tokens: int
) -> None:
    model = make_model(pc_degree)
    plain_loss, plain_grads = loss_and_grads(model, 0)
    loss, grads = loss_and_grads(model, chunk_tokens)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def saved_shapes(model: torch.nn.Module, chunk_tokens: int) -> list[torch.Size]:
    shapes: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t, lambda t: t):
        causal_lm_loss(model, WINDOWS, chunk_tokens)
    return shapes


def test_the_chunked_loss_saves_no_tensor_as_large_as_all_logits() -> None:
    model = make_model(2)
    tokens = WINDOWS.shape[0] * (WINDOWS.shape[1] - 1)

    def holds_all_logits(shape: torch.Size) -> bool:
        return VOCAB in shape and shape.numel() >= tokens * VOCAB

    assert any(holds_all_logits(shape) for shape in saved_shapes(model, 0))  # the check can see them
    assert not any(holds_all_logits(shape) for shape in saved_shapes(model, 7))


def test_a_model_without_the_chunked_forward_is_a_clear_error() -> None:
    hf_config = llama_config(MODEL, VOCAB)
    with pytest.raises(TypeError, match="LlamaForCausalLM returned no loss.*chunk_tokens=0"):
        causal_lm_loss(LlamaForCausalLM(hf_config), WINDOWS, 8)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 0"):
        causal_lm_loss(make_model(0), WINDOWS, -1)
