"""One reader's stream: its shards -> shuffled documents -> token ids -> packed ``seq_len + 1`` windows.

A *reader* is one (data-parallel rank, loader worker) pair; ``num_readers = world_size x workers``.

Sharding. With at least as many shards as readers, reader ``r`` owns the whole shards
``s % num_readers == r``. With fewer shards (say 2 files, 4 readers) every reader walks every shard
and keeps the documents whose index within the shard satisfies ``index % num_readers == r``: still
disjoint and complete, at the cost of each reader parsing text it then drops.

Shuffling, deterministic in the seed. Each epoch permutes the reader's shard order, and documents
are shuffled inside consecutive blocks of ``shuffle_buffer`` raw documents, with permutations drawn
from ``(seed, epoch, reader)`` and ``(seed, epoch, shard, block start)``. The position is therefore a
handful of integers (epoch, shard position, block start, documents taken from the block) plus the
packed tokens not yet emitted, and resuming re-reads the current block instead of storing it.

Packing. Documents become ``[bos] + ids + [eos]`` and are concatenated; window ``k`` is tokens
``[k*seq_len, k*seq_len + seq_len + 1)``, so every token is a target once and long documents are
split across windows, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from pcpretrain.data.packing import pack_documents


class DocumentShards(Protocol):
    """Anything that reads the documents of shard ``index`` from document ``start`` on."""

    @property
    def num_shards(self) -> int: ...

    def iter_shard(self, index: int, start: int = 0) -> Iterator[Any]: ...

    def describe_shard(self, index: int) -> str: ...


Encoder = Callable[[list[Any]], list[Sequence[int]]]


@dataclass
class ReaderPosition:
    """Where a reader is; everything needed to continue its stream exactly."""

    epoch: int = 0
    shard_pos: int = 0
    block_start: int = 0
    block_taken: int = 0
    pending: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class StreamSpec:
    """The settings a position is only valid for; compared on resume."""

    seq_len: int
    seed: int
    shuffle: bool
    shuffle_buffer: int
    num_readers: int
    num_shards: int
    bos_id: int | None
    eos_id: int | None
    vocab_size: int


def assigned_shards(num_shards: int, reader: int, num_readers: int) -> tuple[list[int], bool]:
    """The shards a reader walks, and whether it owns them whole (else it keeps every n-th document)."""
    if num_shards >= num_readers:
        return [s for s in range(num_shards) if s % num_readers == reader], True
    return list(range(num_shards)), False


class ReaderStream:
    """The packed windows of one reader, resumable from :meth:`state_dict`."""

    def __init__(
        self,
        source: DocumentShards,
        encode: Encoder,
        spec: StreamSpec,
        reader: int,
        skip_head: int = 0,
    ) -> None:
        self.source = source
        self.encode = encode
        self.spec = spec
        self.reader = reader
        self.skip_head = skip_head
        self.shards, self.whole_shards = assigned_shards(spec.num_shards, reader, spec.num_readers)
        self.position = ReaderPosition()

    def state_dict(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "reader": self.reader, "position": asdict(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = StreamSpec(**state["spec"])
        if saved != self.spec or state["reader"] != self.reader:
            changed = [
                f"{key}: saved {value!r}, now {getattr(self.spec, key)!r}"
                for key, value in asdict(saved).items()
                if getattr(self.spec, key) != value
            ]
            raise ValueError("cannot resume the data stream: " + ("; ".join(changed) or "reader id differs"))
        self.position = ReaderPosition(**state["position"])

    def windows(self) -> Iterator[np.ndarray]:
        """Endless windows of ``seq_len + 1`` token ids (int64), epoch after epoch."""
        return pack_windows(self.documents(), self.spec, self.position)

    def documents(self) -> Iterator[Sequence[int]]:
        """Token ids of this reader's documents in shuffled order; advances ``self.position``."""
        pos = self.position
        while True:
            order = self._shard_order(pos.epoch)
            found = pos.shard_pos > 0 or pos.block_start > 0
            while pos.shard_pos < len(order):
                shard = order[pos.shard_pos]
                for ids in self._shard_documents(shard):
                    found = True
                    yield ids
                pos.shard_pos, pos.block_start, pos.block_taken = pos.shard_pos + 1, 0, 0
            if not found:
                shards = ", ".join(self.source.describe_shard(s) for s in self.shards[:3])
                raise ValueError(
                    f"data reader {self.reader} of {self.spec.num_readers} found no documents in its shards "
                    f"({shards}{', ...' if len(self.shards) > 3 else ''}); the source is empty or too small "
                    "for this many ranks x loader workers"
                )
            pos.epoch, pos.shard_pos = pos.epoch + 1, 0

    def _shard_documents(self, shard: int) -> Iterator[Sequence[int]]:
        pos = self.position
        documents = self.source.iter_shard(shard, start=pos.block_start)
        while True:
            raw = _take(documents, self.spec.shuffle_buffer)
            if not raw:
                return
            kept = [doc for offset, doc in enumerate(raw) if self._keeps(shard, pos.block_start + offset)]
            encoded = self.encode(kept) if kept else []
            order = self._block_order(shard, pos.block_start, len(encoded))
            for i in range(pos.block_taken, len(encoded)):
                pos.block_taken = i + 1
                yield encoded[order[i]]
            pos.block_start, pos.block_taken = pos.block_start + len(raw), 0

    def _keeps(self, shard: int, index: int) -> bool:
        if shard == 0 and index < self.skip_head:
            return False
        return self.whole_shards or index % self.spec.num_readers == self.reader

    def _shard_order(self, epoch: int) -> list[int]:
        if not self.spec.shuffle:
            return list(self.shards)
        rng = np.random.default_rng([self.spec.seed, epoch, self.reader])
        return [self.shards[i] for i in rng.permutation(len(self.shards))]

    def _block_order(self, shard: int, block_start: int, size: int) -> np.ndarray:
        if not self.spec.shuffle:
            return np.arange(size)
        return np.random.default_rng([self.spec.seed, shard, block_start, self.position.epoch]).permutation(
            size
        )


def pack_windows(documents: Iterator[Sequence[int]], spec: StreamSpec, holder: Any) -> Iterator[np.ndarray]:
    """Frame and concatenate documents, cut windows; ``holder.pending`` always holds the unemitted tokens."""
    seq_len = spec.seq_len
    pending = np.asarray(holder.pending, dtype=np.int64)
    for ids in documents:
        framed = pack_documents([ids], spec.bos_id, spec.eos_id, spec.vocab_size).astype(np.int64)
        pending = np.concatenate([pending, framed])
        offset = 0
        while len(pending) - offset >= seq_len + 1:
            window = pending[offset : offset + seq_len + 1]
            offset += seq_len
            holder.pending = pending[offset:].tolist()
            yield window
        pending = pending[offset:]
        holder.pending = pending.tolist()


@dataclass
class MixturePosition:
    """Documents drawn so far and the packed tokens not yet emitted."""

    draws: int = 0
    pending: list[int] = field(default_factory=list)


class MixedStream:
    """Several sources' document streams for one reader, drawn by weight; packed like a single stream.

    Draw ``n`` picks its source with a generator seeded by ``(seed, reader, n)``, so the sequence of
    sources is fixed by the seed and the position is just the draw count plus each source's own.
    """

    def __init__(self, components: Sequence[ReaderStream], weights: Sequence[float], reader: int) -> None:
        if len(components) != len(weights) or not components:
            raise ValueError("a mixture needs one weight per source and at least one source")
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, got {list(weights)}")
        self.components = list(components)
        self.probabilities = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.spec = components[0].spec
        self.reader = reader
        self.position = MixturePosition()

    def documents(self) -> Iterator[Sequence[int]]:
        streams = [component.documents() for component in self.components]
        while True:
            rng = np.random.default_rng([self.spec.seed, self.reader, self.position.draws])
            choice = int(rng.choice(len(streams), p=self.probabilities))
            ids = next(streams[choice])
            self.position.draws += 1
            yield ids

    def windows(self) -> Iterator[np.ndarray]:
        return pack_windows(self.documents(), self.spec, self.position)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mixture": asdict(self.position),
            "probabilities": self.probabilities.tolist(),
            "components": [component.state_dict() for component in self.components],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "mixture" not in state or len(state["components"]) != len(self.components):
            raise ValueError("cannot resume the data stream: the saved position is not of this mixture")
        if not np.allclose(state["probabilities"], self.probabilities):
            raise ValueError(
                f"cannot resume the data stream: mixture weights changed from {state['probabilities']} "
                f"to {self.probabilities.tolist()}"
            )
        for component, saved in zip(self.components, state["components"], strict=True):
            component.load_state_dict(saved)
        self.position = MixturePosition(**state["mixture"])


def _take(iterator: Iterator[Any], count: int) -> list[Any]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == count:
            break
    return out
