"""The one home of values that several modules must agree on: allowed names and shared defaults.

Kept free of torch, so :mod:`pcpretrain.config` validates a config in a second; the modules that
implement each choice (the PC polynomial, Newton-Schulz, routing, the loss head) import from here.
"""

from __future__ import annotations

import re

# Coefficients of the PC polynomial q_k in ascending powers of the Gram matrix, by degree k.
PC_COEFFICIENTS: dict[int, tuple[float, ...]] = {
    1: (1.507, -0.507),
    2: (2.083, -1.643, 0.560),
    3: (2.909, -4.649, 4.023, -1.283),
    4: (3.625, -9.261, 14.097, -10.351, 2.890),
}
# 0 turns preconditioning off.
PC_DEGREES: tuple[int, ...] = (0, *PC_COEFFICIENTS)
# The matrices preconditioned by default: the FFN matrices and the attention output projection.
DEFAULT_PC_TARGETS: tuple[str, ...] = (
    "*.mlp.gate_proj",
    "*.mlp.up_proj",
    "*.mlp.down_proj",
    "*.self_attn.o_proj",
)

# Newton-Schulz coefficient sets (defined in pcpretrain.optim.newton_schulz) and iteration dtypes.
NS_COEFFICIENT_SETS: tuple[str, ...] = ("simple", "quintic", "polar_express", "aol")
NS_DTYPES: tuple[str, ...] = ("bfloat16", "float32")
NS_METHODS: tuple[str, ...] = ("standard", "gram")

# Parameter categories in routing order (first matching rule wins), and those Muon takes.
PARAMETER_CATEGORIES: tuple[str, ...] = ("pc_gamma", "embedding", "lm_head", "vector", "hidden_matrix")
MUON_CATEGORIES: tuple[str, ...] = ("hidden_matrix",)

# Tokens per chunk of the fused LM-head loss (0: all logits at once).
LOSS_CHUNK_TOKENS = 8192

# Tokenizers trained here (data.tokenizer.kind, `pcpretrain tokenizer train --kind`): a Llama-2 style
# SentencePiece BPE, or a Llama-3 style byte-level BPE (a Hugging Face tokenizer.json).
TOKENIZER_KINDS: tuple[str, ...] = ("sentencepiece", "bpe")
# A Hugging Face Hub repository id ("org/name"); a path to a tokenizer file is never one.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_TOKENIZER_FILE_SUFFIXES = (".model", ".json")


def looks_like_hub_id(value: str) -> bool:
    """Whether ``value`` (not an existing local path) names a Hub repository rather than a missing file."""
    return bool(_HUB_ID.fullmatch(value)) and not value.endswith(_TOKENIZER_FILE_SUFFIXES)


# `model.vocab_size: null` rounds the tokenizer's size up to a multiple of this (faster matmuls).
VOCAB_MULTIPLE = 64
