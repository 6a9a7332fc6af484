"""The model builder: a Llama with the paper's conventions and a chunked-loss forward, and its FLOP count."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from pcpretrain import pc
from pcpretrain.config import ModelConfig
from pcpretrain.model import ChunkedLossHead, build_model, flops_per_token, llama_config, parameter_counts

TINY = ModelConfig(
    name="tiny", hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, max_seq_len=128
)


def test_builds_a_plain_llama_with_untied_embeddings_rope_10000_and_sdpa() -> None:
    model = build_model(TINY, vocab_size=300)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.config.tie_word_embeddings is False
    assert model.config.rope_parameters["rope_theta"] == 10000.0
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_parameter_counts_match_the_built_model(num_kv_heads: int | None) -> None:
    cfg = ModelConfig(**{**TINY.__dict__, "num_kv_heads": num_kv_heads})
    model = build_model(cfg, vocab_size=300)
    counts = parameter_counts(cfg, 300)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == model.model.embed_tokens.weight.numel()


def test_flops_per_token_of_the_1b_shapes() -> None:
    cfg = ModelConfig(name="1B", hidden_size=2048, intermediate_size=5632, num_layers=18, num_heads=16)
    non_embedding = 18 * (4 * 2048 * 2048 + 3 * 2048 * 5632 + 2 * 2048) + 2048 + 32000 * 2048
    expected = 6 * non_embedding + 12 * 18 * 2048 * 2048
    assert flops_per_token(cfg, 32000, 2048) == expected
    assert 6.8e9 < expected < 6.9e9


def test_initialisation_and_state_dict_names_are_the_stock_llama_ones() -> None:
    torch.manual_seed(0)
    model = build_model(TINY, vocab_size=300)
    hf_config = llama_config(TINY, 300)
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    stock = LlamaForCausalLM(hf_config)
    assert list(model.state_dict()) == list(stock.state_dict())
    for name, tensor in stock.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert isinstance(model.lm_head, ChunkedLossHead)
    assert model.lm_head.weight is model.get_output_embeddings().weight


def test_without_targets_the_forward_is_the_stock_one() -> None:
    model = build_model(TINY, vocab_size=300).eval()
    input_ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        output = model(input_ids=input_ids)
        assert output.loss is None and output.logits.shape == (2, 9, 300)
        with_targets = model(input_ids=input_ids, targets=input_ids, loss_chunk_tokens=5)
    assert with_targets.logits is None and with_targets.loss.shape == ()


def test_targets_with_labels_or_a_replaced_head_are_refused() -> None:
    model = build_model(TINY, vocab_size=300)
    input_ids = torch.randint(0, 300, (1, 5))
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=input_ids, targets=input_ids, labels=input_ids)
    pc.apply_pc(model, 2, ["lm_head"])
    with pytest.raises(TypeError, match=r"lm_head to be a ChunkedLossHead, but it is a PCLinear"):
        model(input_ids=input_ids, targets=input_ids)


def test_a_compiled_head_still_computes_the_chunked_loss() -> None:
    """Regional compilation wraps lm_head in an OptimizedModule; the loss itself stays eager."""
    torch.manual_seed(0)
    model = build_model(TINY, vocab_size=300)
    input_ids = torch.randint(0, 300, (2, 9))
    expected = model(input_ids=input_ids, targets=input_ids, loss_chunk_tokens=5).loss
    model.lm_head = torch.compile(model.lm_head, backend="eager")
    loss = model(input_ids=input_ids, targets=input_ids, loss_chunk_tokens=5).loss
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
