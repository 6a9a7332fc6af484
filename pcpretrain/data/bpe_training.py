"""Train a Llama-3 style byte-level BPE with the ``tokenizers`` library (offline, deterministic).

The result is an ordinary Hugging Face tokenizer directory (``tokenizer.json`` +
``tokenizer_config.json``) that :class:`pcpretrain.data.hf_tokenizer.HFTokenizer` and
``transformers.AutoTokenizer`` both load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from pcpretrain.data.hf_tokenizer import (
    GENERIC_TOKENIZER_CLASS,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    HFTokenizer,
)
from pcpretrain.files import atomic_write_text

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
# Llama-3's pre-tokenizer split: contractions, words, numbers of up to 3 digits, punctuation, spaces.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Everything that changes the trained tokenizer (besides corpus and size); part of the cache key.
BPE_SETTINGS: dict[str, Any] = {
    "split_pattern": SPLIT_PATTERN,
    "special_tokens": [BOS_TOKEN, EOS_TOKEN],
    "min_frequency": 2,
}
# 256 byte symbols plus the special tokens: the smallest vocabulary that encodes every text.
MIN_VOCAB_SIZE = 256 + len(BPE_SETTINGS["special_tokens"])


def train_bpe(documents: Sequence[str], vocab_size: int, out_dir: str | Path) -> HFTokenizer:
    """Train a byte-level BPE of at most ``vocab_size`` ids (special tokens included) into ``out_dir``.

    Ids 0 and 1 are BOS and EOS; the 256 byte symbols follow, so any text encodes without an unknown
    token. A corpus too small for ``vocab_size`` merges gives fewer ids (see ``vocab_size``).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"byte-level BPE needs vocab_size >= {MIN_VOCAB_SIZE} (256 bytes + BOS/EOS), got {vocab_size}"
        )
    texts = [doc for doc in documents if doc.strip()]
    if not texts:
        raise ValueError("cannot train a tokenizer: the documents contain no non-blank text")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=BPE_SETTINGS["min_frequency"],
        special_tokens=BPE_SETTINGS["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # As Llama-3: transformers adds BOS (not EOS) when asked for special tokens.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, backend.token_to_id(BOS_TOKEN))],
    )
    out_dir = Path(out_dir)
    config = {
        "tokenizer_class": GENERIC_TOKENIZER_CLASS,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "clean_up_tokenization_spaces": False,
    }
    atomic_write_text(out_dir / TOKENIZER_CONFIG, json.dumps(config, indent=2) + "\n")
    # Written last: its presence marks a complete directory (the cache in `load_or_train` checks it).
    atomic_write_text(out_dir / TOKENIZER_JSON, backend.to_str(pretty=True))
    return HFTokenizer.from_path(out_dir)
