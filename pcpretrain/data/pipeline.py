"""From the data config to a tokenizer, the training documents (sharded) and the held-out set."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import get_worker_info

from pcpretrain.config import HUB_TRAINED_VOCAB_SIZE, TRAINED_VOCAB_SIZE, DataConfig, MixtureSourceConfig
from pcpretrain.data.in_memory import InMemoryShards
from pcpretrain.data.sample_corpus import sample_documents, split_documents
from pcpretrain.data.sources import TextSource
from pcpretrain.data.stream import DocumentShards
from pcpretrain.data.token_shards import TokenShards
from pcpretrain.data.tokenizer import Tokenizer, load_or_train, load_tokenizer
from pcpretrain.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_SHARDS = 8
MAX_VALIDATION_DOCUMENTS = 10_000


class TextEncoder:
    """Text -> ids with the tokenizer at ``location``, loaded on first use: each worker loads its own."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self._tokenizer: Tokenizer | None = None

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.location)
            if get_worker_info() is not None:
                self._tokenizer.use_one_thread()
        return self._tokenizer.encode_batch(texts)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "_tokenizer": None}


class PretokenizedEncoder:
    """Token shards hold ids already; encoding is the identity."""

    def __call__(self, documents: list[Any]) -> list[Any]:
        return documents


@dataclass
class DataComponent:
    """One training source with its encoder, mixture weight and held-out head to skip."""

    source: DocumentShards
    encoder: TextEncoder | PretokenizedEncoder
    weight: float = 1.0
    skip_head: int = 0


@dataclass
class PreparedData:
    """Everything the trainer needs from the data side."""

    tokenizer: Tokenizer
    components: list[DataComponent]
    validation: list[Sequence[int]]
    bos_id: int | None
    eos_id: int | None


def cache_dir(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$PCPRETRAIN_CACHE``, else ``~/.cache/pcpretrain``."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("PCPRETRAIN_CACHE", Path.home() / ".cache" / "pcpretrain")).expanduser()


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Open the sources, settle the tokenizer, and tokenize the held-out set; reads no training data."""
    cache = cache_dir(cfg)
    held_out_texts: list[str] | None = None
    if cfg.source == "sample":
        train_docs, held_out_texts = split_documents(sample_documents(cache), cfg.validation_fraction)
        weighted: list[tuple[DocumentShards, float]] = [
            (InMemoryShards(train_docs, SAMPLE_SHARDS, "sample"), 1.0)
        ]
    elif cfg.source == "mixture":
        weighted = [(open_source(part, cache), part.weight) for part in cfg.mixture]
    else:
        weighted = [(open_source(cfg, cache), 1.0)]
    first = weighted[0][0]
    tokenizer = settle_tokenizer(cfg, first, cache)
    bos_id, eos_id = special_ids(cfg, tokenizer)
    for source, _ in weighted:
        if isinstance(source, TokenShards):
            source.check_tokenizer(tokenizer)
    skip_head = 0
    if held_out_texts is not None:
        validation = tokenizer.encode_batch(held_out_texts)
    elif cfg.validation_files or cfg.hub.validation_split:
        held_out = open_text(cfg, cache, split=cfg.hub.validation_split, files=cfg.validation_files)
        validation = tokenizer.encode_batch(list(head_documents(held_out, MAX_VALIDATION_DOCUMENTS)))
    elif cfg.validation_shards_dir:
        validation = list(head_documents(TokenShards(cfg.validation_shards_dir), MAX_VALIDATION_DOCUMENTS))
    else:
        skip_head = cfg.validation_documents
        head = list(itertools.islice(first.iter_shard(0), skip_head))
        validation = head if isinstance(first, TokenShards) else tokenizer.encode_batch(head)
    components = [
        DataComponent(source, _encoder(source, tokenizer), weight, skip_head if index == 0 else 0)
        for index, (source, weight) in enumerate(weighted)
    ]
    log.info(
        "data: %s (%s); %d held-out documents; vocab %d",
        cfg.source,
        ", ".join(f"{c.source.num_shards} shards x {c.weight:g}" for c in components),
        len(validation),
        tokenizer.vocab_size,
    )
    return PreparedData(tokenizer, components, validation, bos_id, eos_id)


def open_source(cfg: DataConfig | MixtureSourceConfig, cache: Path) -> DocumentShards:
    """Token shards, local files or a Hub dataset, as the config's ``source`` says."""
    if cfg.source == "shards":
        return TokenShards(cfg.shards_dir)
    return open_text(cfg, cache, split=cfg.hub.split, files=cfg.train_files)


def _encoder(source: DocumentShards, tokenizer: Tokenizer) -> TextEncoder | PretokenizedEncoder:
    return PretokenizedEncoder() if isinstance(source, TokenShards) else TextEncoder(tokenizer.location)


def open_text(
    cfg: DataConfig | MixtureSourceConfig, cache: Path, *, split: str | None, files: Sequence[str]
) -> TextSource:
    """Local files when given, else the Hub dataset's ``split``; checked eagerly so errors come first."""
    if files:
        source = TextSource.from_files(list(files), text_field=cfg.text_field, cache_dir=cache / "datasets")
    else:
        hub = cfg.hub
        source = TextSource.from_hub(
            hub.path,
            name=hub.name,
            split=split or "train",
            text_field=cfg.text_field,
            revision=hub.revision,
            cache_dir=cache / "datasets",
        )
    source.check()
    return source


def settle_tokenizer(cfg: DataConfig, source: DocumentShards, cache: Path) -> Tokenizer:
    """The configured one (path or Hub id); else the token shards' own; else one of
    ``data.tokenizer.kind`` trained on the source's head (cached)."""
    if cfg.tokenizer.path:
        try:
            return load_tokenizer(cfg.tokenizer.path)
        except (ValueError, OSError) as err:  # bad input, reported without a traceback
            raise ConfigError(f"data.tokenizer.path={cfg.tokenizer.path!r}: {err}") from err
    if isinstance(source, TokenShards):
        return source.load_tokenizer()
    return load_or_train(
        lambda: [text for text in head_documents(source, cfg.tokenizer.train_documents) if text],
        cfg.tokenizer.vocab_size or (HUB_TRAINED_VOCAB_SIZE if cfg.source == "hub" else TRAINED_VOCAB_SIZE),
        cache / "tokenizers",
        cfg.tokenizer.kind,
    )


def special_ids(cfg: DataConfig, tokenizer: Tokenizer) -> tuple[int | None, int | None]:
    """The BOS/EOS ids packing adds: ``data.tokenizer.bos_token``/``eos_token`` when set, else the
    tokenizer's own; None where ``data.add_bos``/``data.add_eos`` is off."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    try:
        if cfg.tokenizer.bos_token is not None:
            bos = tokenizer.require_id(cfg.tokenizer.bos_token, "data.tokenizer.bos_token")
        if cfg.tokenizer.eos_token is not None:
            eos = tokenizer.require_id(cfg.tokenizer.eos_token, "data.tokenizer.eos_token")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return (bos if cfg.add_bos else None), (eos if cfg.add_eos else None)


def head_documents(source: DocumentShards, count: int) -> Iterator[Any]:
    """The first ``count`` documents, walking the shards in order."""
    every = itertools.chain.from_iterable(source.iter_shard(s) for s in range(source.num_shards))
    return itertools.islice(every, count)
