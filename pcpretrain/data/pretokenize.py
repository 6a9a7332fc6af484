"""Tokenize a text source once into token shards (one output shard per input shard)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

from pcpretrain.data.stream import DocumentShards
from pcpretrain.data.token_shards import TokenShards, TokenShardWriter
from pcpretrain.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def tokenize_to_shards(
    source: DocumentShards,
    tokenizer: Tokenizer,
    out_dir: Path,
    *,
    description: str = "",
    batch_size: int = 1024,
    overwrite: bool = False,
) -> TokenShards:
    """Write ``source``'s documents as token shards; keeping its shard count keeps readers parallel."""
    with TokenShardWriter(
        out_dir, tokenizer.vocab_size, tokenizer.model_path, source=description, overwrite=overwrite
    ) as writer:
        for shard in range(source.num_shards):
            writer.begin_shard()
            count = 0
            for texts in _batched(source.iter_shard(shard), batch_size):
                for ids in tokenizer.encode_batch([text for text in texts if text]):
                    writer.add_document(ids)
                count += len(texts)
            log.info("tokenized %s: %d documents", source.describe_shard(shard), count)
    return TokenShards(out_dir)


def _batched(iterator: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(iterator, size)):
        yield batch
