"""Build the Llama we train from the model config, and count its FLOPs.

The model is a ``transformers.LlamaForCausalLM`` with plain Llama parameter names and weights; its only
addition is a training forward that returns the loss without materialising all logits. PC layers are
applied from outside by :mod:`pcpretrain.pc`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from pcpretrain.choices import LOSS_CHUNK_TOKENS
from pcpretrain.compat import output_cache, uncompiled
from pcpretrain.config import ModelConfig
from pcpretrain.fused_cross_entropy import linear_cross_entropy


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
        attn_implementation="sdpa",
    )


class ChunkedLossHead(nn.Linear):
    """The output projection; given targets, it returns the mean cross-entropy computed chunk by chunk.

    The loss is computed inside this module's own forward, the one that owns the weight, so engines that
    gather parameters around a module's forward and backward (DeepSpeed ZeRO-3, FSDP2) treat it exactly
    as they treat the plain projection, and no external-parameter registration is needed.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> ChunkedLossHead:
        """Adopt ``linear``'s very parameters (already initialised; no RNG use, same state-dict names)."""
        if linear.bias is not None:
            raise ValueError("the chunked loss head has no bias; the Llama output projection has none")
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.out_features, head.in_features = linear.weight.shape
        head.weight = linear.weight
        head.register_parameter("bias", None)
        return head

    def forward(self, hidden: Tensor, targets: Tensor | None = None, chunk_tokens: int = 0) -> Tensor:
        """Logits of ``hidden``; or, with ``targets`` (``hidden``'s shape without its last dimension),
        the token-mean cross-entropy, ``chunk_tokens`` rows of logits at a time."""
        if targets is None:
            return super().forward(hidden)
        return linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), self.weight, targets.reshape(-1), chunk_tokens
        )


class PretrainingLlama(LlamaForCausalLM):
    """``LlamaForCausalLM`` whose forward, given ``targets``, returns only the loss, computed in chunks.

    Without ``targets`` it is the parent's forward unchanged, so evaluation and generation code sees a
    stock Llama. The loss runs inside the model's forward so DDP, FSDP2 and DeepSpeed see an ordinary one.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.lm_head = ChunkedLossHead.from_linear(self.lm_head)

    def forward(
        self,
        *args: Any,
        targets: Tensor | None = None,
        loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """With ``targets`` (next-token ids, shaped like ``input_ids``): the mean cross-entropy as ``loss``,
        ``logits`` None. ``labels`` are the parent's (shifted, full-logits) loss and cannot be combined."""
        if targets is None:
            return super().forward(*args, **kwargs)
        if kwargs.pop("labels", None) is not None:
            raise ValueError("pass targets (already shifted) or labels (shifted by the model), not both")
        head = uncompiled(self.lm_head)
        if not isinstance(head, ChunkedLossHead):
            raise TypeError(
                f"the chunked loss needs lm_head to be a {ChunkedLossHead.__name__}, but it is a "
                f"{type(head).__name__} (do pc.targets match lm_head?); set trainer.loss_chunk_tokens=0"
            )
        outputs = self.model(*args, **kwargs)
        loss = self.lm_head(outputs.last_hidden_state, targets=targets, chunk_tokens=loss_chunk_tokens)
        return CausalLMOutputWithPast(
            loss=loss,
            **output_cache(outputs),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def build_model(
    cfg: ModelConfig, vocab_size: int, bos_id: int | None = 1, eos_id: int | None = 2
) -> PretrainingLlama:
    """A freshly initialised Llama (initialisation follows the global torch RNG, as the stock class's)."""
    hf_config = llama_config(cfg, vocab_size, bos_id, eos_id)
    return PretrainingLlama(hf_config)


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
