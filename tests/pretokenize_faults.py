"""Sources that fail or stall at a chosen shard, for tests that interrupt ``tokenize_to_shards``.

A module of its own (not a test file) so that spawned tokenize workers can import these classes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pcpretrain.data.stream import DocumentShards


class FaultyShards:
    """``source`` unchanged, except that from shard ``at`` on, reading the shard ends in ``fault``
    after its first document: ``"raise"`` (a RuntimeError) or ``"stall"`` (sleep until killed)."""

    def __init__(self, source: DocumentShards, at: int, fault: str) -> None:
        self.source = source
        self.at = at
        self.fault = fault

    @property
    def num_shards(self) -> int:
        return self.source.num_shards

    def describe_shard(self, index: int) -> str:
        return self.source.describe_shard(index)

    def iter_shard(self, index: int, start: int = 0, stride: int = 1) -> Iterator[Any]:
        documents = self.source.iter_shard(index, start, stride)
        if index < self.at:
            yield from documents
            return
        yield next(documents)
        if self.fault == "raise":
            raise RuntimeError(f"injected failure in shard {index}")
        time.sleep(3600)
