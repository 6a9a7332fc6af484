"""The model builder: a stock Llama with the paper's conventions, and its FLOP count."""

from __future__ import annotations

import pytest
from transformers import LlamaForCausalLM

from pcpretrain.config import ModelConfig
from pcpretrain.model import build_model, flops_per_token, parameter_counts

TINY = ModelConfig(
    name="tiny", hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, max_seq_len=128
)


def test_builds_a_plain_llama_with_untied_embeddings_rope_10000_and_sdpa() -> None:
    model = build_model(TINY, vocab_size=300)
    assert type(model) is LlamaForCausalLM
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
