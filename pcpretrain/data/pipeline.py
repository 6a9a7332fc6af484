"""From the data config to a tokenizer and packed train / validation token arrays."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcpretrain.config import DataConfig
from pcpretrain.data.local_files import read_documents
from pcpretrain.data.packing import pack_documents
from pcpretrain.data.sample_corpus import sample_documents, split_documents
from pcpretrain.data.tokenizer import Tokenizer, load_or_train

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Everything the trainer needs from the data side."""

    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray


def cache_dir(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$PCPRETRAIN_CACHE``, else ``~/.cache/pcpretrain``."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("PCPRETRAIN_CACHE", Path.home() / ".cache" / "pcpretrain")).expanduser()


def load_documents(cfg: DataConfig, cache: Path) -> tuple[list[str], list[str]]:
    """Training and held-out documents: given validation files, else a deterministic split."""
    if cfg.source == "sample":
        documents = sample_documents(cache)
    else:
        documents = read_documents(list(cfg.train_files), cfg.text_field, cache / "datasets")
    if cfg.validation_files:
        return documents, read_documents(list(cfg.validation_files), cfg.text_field, cache / "datasets")
    return split_documents(documents, cfg.validation_fraction)


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Load documents, load or train (and cache) the tokenizer, tokenize and pack both splits."""
    cache = cache_dir(cfg)
    train_docs, val_docs = load_documents(cfg, cache)
    if cfg.tokenizer.path:
        tokenizer = Tokenizer.load(cfg.tokenizer.path)
    else:
        tokenizer = load_or_train(lambda: train_docs, cfg.tokenizer.vocab_size, cache / "tokenizers")
    bos = tokenizer.bos_id if cfg.add_bos else None
    eos = tokenizer.eos_id if cfg.add_eos else None
    train_tokens = pack_documents(tokenizer.encode_batch(train_docs), bos, eos, tokenizer.vocab_size)
    val_tokens = pack_documents(tokenizer.encode_batch(val_docs), bos, eos, tokenizer.vocab_size)
    log.info(
        "data: %d train documents (%d tokens), %d validation documents (%d tokens), vocab %d",
        len(train_docs),
        len(train_tokens),
        len(val_docs),
        len(val_tokens),
        tokenizer.vocab_size,
    )
    return PreparedData(tokenizer, train_tokens, val_tokens)
