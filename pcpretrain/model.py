"""Build a plain ``transformers.LlamaForCausalLM`` from the model config, and count its FLOPs.

The model stays a stock Llama; PC layers are applied from outside by :mod:`pcpretrain.pc`.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pcpretrain.config import ModelConfig


def llama_config(
    cfg: ModelConfig, vocab_size: int, bos_id: int | None = 1, eos_id: int | None = 2
) -> LlamaConfig:
    """The Hugging Face config for ``cfg``: untied embeddings, RoPE theta from config, SDPA attention."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.initializer_range,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        architectures=["LlamaForCausalLM"],
    )


def build_model(
    cfg: ModelConfig, vocab_size: int, bos_id: int | None = 1, eos_id: int | None = 2
) -> LlamaForCausalLM:
    """A freshly initialised Llama (initialisation follows the global torch RNG)."""
    hf_config = llama_config(cfg, vocab_size, bos_id, eos_id)
    hf_config._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_config)


def parameter_counts(cfg: ModelConfig, vocab_size: int) -> dict[str, int]:
    """Parameter counts from the shapes alone, so 1B-scale figures need no model in memory."""
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    head_dim = d // cfg.num_heads
    kv_dim = (cfg.num_kv_heads or cfg.num_heads) * head_dim
    attention = d * d + 2 * d * kv_dim + d * d
    mlp = 3 * d * f
    norms = 2 * d
    per_layer = attention + mlp + norms
    embedding = vocab_size * d
    head = vocab_size * d
    total = embedding + layers * per_layer + d + head
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + 12 x layers x dim x seq_len.

    The first term covers forward and backward matmuls (the LM head included, the embedding
    lookup excluded); the second is the attention score and value products, counted without the
    causal-mask saving, as torchtitan and the PaLM paper do, so MFU figures are comparable.
    """
    counts = parameter_counts(cfg, vocab_size)
    return 6.0 * counts["non_embedding"] + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the accelerator, for MFU; None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
    return next((flops for key, flops in table.items() if key in name), None)
