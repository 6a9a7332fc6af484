"""A list of documents presented as shards, so small in-memory corpora use the streaming pipeline."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


class InMemoryShards:
    """Documents dealt round-robin into ``num_shards`` shards (document ``i`` goes to shard ``i % n``)."""

    def __init__(self, documents: Sequence[Any], num_shards: int, name: str = "in-memory corpus") -> None:
        if not documents:
            raise ValueError(f"{name} holds no documents")
        self.num_shards = max(1, min(num_shards, len(documents)))
        self._shards = [list(documents[k :: self.num_shards]) for k in range(self.num_shards)]
        self.name = name

    def iter_shard(self, index: int, start: int = 0, stride: int = 1) -> Iterator[Any]:
        return iter(self._shards[index][start::stride])

    def describe_shard(self, index: int) -> str:
        return f"{self.name} (shard {index} of {self.num_shards})"
