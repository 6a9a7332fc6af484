"""One logical stream: its documents -> shuffled -> token ids -> packed ``seq_len + 1`` windows.

The corpus is split into ``num_streams`` logical streams (see :mod:`pcpretrain.data.stream_layout`
for how their windows form the batches). Each stream is defined by the source and the data
settings alone, never by the processes or loader workers that compute it.

Splitting. With at least as many shards as streams, stream ``j`` owns the whole shards
``s % num_streams == j``. With fewer shards (say 4 files, 16 streams) the ``k`` streams
``j % num_shards == s`` share shard ``s``, each keeping every ``k``-th row (stream ``j`` the rows
``i % k == j // num_shards``): still disjoint and complete, each shard is read by only ``k``
streams, and the sources skip the other rows cheaply (Arrow ``take``, memory-map views).

Shuffling, deterministic in the seed. Each epoch permutes the stream's shard order, and documents
are shuffled inside consecutive blocks of ``shuffle_buffer`` kept rows, with permutations drawn
from ``(seed, epoch, stream)`` and ``(seed, epoch, stream, shard, block)``. The position is
therefore a handful of integers (epoch, shard position, block start, documents taken from the
block, windows emitted) plus the packed tokens not yet emitted; resuming re-reads the current block
instead of storing it.

Packing. Documents become ``[bos] + ids + [eos]`` and are concatenated; window ``k`` is tokens
``[k*seq_len, k*seq_len + seq_len + 1)``, so every token is a target once and long documents are
split across windows, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from pcpretrain.data.packing import check_special_ids, frame_document


class DocumentShards(Protocol):
    """Anything that reads every ``stride``-th document of shard ``index`` from document ``start`` on."""

    @property
    def num_shards(self) -> int: ...

    def iter_shard(self, index: int, start: int = 0, stride: int = 1) -> Iterator[Any]: ...

    def describe_shard(self, index: int) -> str: ...


Encoder = Callable[[list[Any]], list[Sequence[int]]]


def _no_tokens() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class StreamPosition:
    """Where a logical stream is; everything needed to continue it exactly.

    ``block_start`` counts the stream's kept rows of the current shard, ``windows`` the windows
    emitted since the start of training (checked against the global window count on resume).
    """

    epoch: int = 0
    shard_pos: int = 0
    block_start: int = 0
    block_taken: int = 0
    windows: int = 0
    pending: np.ndarray = field(default_factory=_no_tokens)


@dataclass(frozen=True)
class StreamSpec:
    """The settings a position is only valid for; compared on resume."""

    seq_len: int
    seed: int
    shuffle: bool
    shuffle_buffer: int
    num_streams: int
    num_shards: int
    bos_id: int | None
    eos_id: int | None
    vocab_size: int


@dataclass(frozen=True)
class ShardRows:
    """The rows of a shard one stream reads: ``first, first + stride, ...``."""

    first: int
    stride: int


def stream_shards(num_shards: int, stream: int, num_streams: int) -> list[int]:
    """The shards a stream reads: whole shards when there are enough, else a part of one shard."""
    if num_shards >= num_streams:
        return list(range(stream, num_shards, num_streams))
    return [stream % num_shards]


def shard_rows(num_shards: int, shard: int, stream: int, num_streams: int) -> ShardRows:
    """Which rows of ``shard`` belong to ``stream``: all of them when it owns the shard whole, else
    every k-th, k being the number of streams that share the shard."""
    if num_shards >= num_streams:
        return ShardRows(0, 1)
    sharing = len(range(shard, num_streams, num_shards))
    return ShardRows(stream // num_shards, sharing)


def _position_state(position: Any) -> dict[str, Any]:
    """A position as plain values, detached from the live one (``asdict`` copies the pending array)."""
    return asdict(position)


def _position_from_state(kind: type, state: dict[str, Any]) -> Any:
    """The position dataclass ``kind`` back from :func:`_position_state` (pending tokens as int64)."""
    return kind(**{**state, "pending": np.asarray(state["pending"], dtype=np.int64)})


class LogicalStream:
    """The packed windows of logical stream ``stream`` of one source, resumable from its state."""

    def __init__(
        self,
        source: DocumentShards,
        encode: Encoder,
        spec: StreamSpec,
        stream: int,
        skip_head: int = 0,
    ) -> None:
        check_special_ids(spec.bos_id, spec.eos_id, spec.vocab_size)
        self.source = source
        self.encode = encode
        self.spec = spec
        self.stream = stream
        self.skip_head = skip_head
        self.shards = stream_shards(spec.num_shards, stream, spec.num_streams)
        self.position = StreamPosition()

    def state_dict(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "stream": self.stream, "position": _position_state(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = StreamSpec(**state["spec"])
        if saved != self.spec or state["stream"] != self.stream:
            changed = [
                f"{key}: saved {value!r}, now {getattr(self.spec, key)!r}"
                for key, value in asdict(saved).items()
                if getattr(self.spec, key) != value
            ]
            raise ValueError("cannot resume the data stream: " + ("; ".join(changed) or "stream id differs"))
        self.position = _position_from_state(StreamPosition, state["position"])

    def windows(self) -> Iterator[np.ndarray]:
        """Endless windows of ``seq_len + 1`` token ids (int64), epoch after epoch."""
        return pack_windows(self.documents(), self.spec, self.position)

    def documents(self) -> Iterator[Sequence[int]]:
        """Token ids of this stream's documents in shuffled order; advances ``self.position``."""
        pos = self.position
        while True:
            order = self._shard_order(pos.epoch)
            found = pos.shard_pos > 0 or pos.block_start > 0
            while pos.shard_pos < len(order):
                for ids in self._shard_documents(order[pos.shard_pos]):
                    found = True
                    yield ids
                pos.shard_pos, pos.block_start, pos.block_taken = pos.shard_pos + 1, 0, 0
            if not found:
                shards = ", ".join(self.source.describe_shard(s) for s in self.shards[:3])
                raise ValueError(
                    f"logical stream {self.stream} of data.streams={self.spec.num_streams} found no "
                    f"documents in {shards}{', ...' if len(self.shards) > 3 else ''}: the source has too "
                    "few documents for that many streams; lower data.streams"
                )
            pos.epoch, pos.shard_pos = pos.epoch + 1, 0

    def _shard_documents(self, shard: int) -> Iterator[Sequence[int]]:
        pos = self.position
        rows = shard_rows(self.spec.num_shards, shard, self.stream, self.spec.num_streams)
        start = rows.first + pos.block_start * rows.stride
        documents = self.source.iter_shard(shard, start=start, stride=rows.stride)
        while True:
            raw = _take(documents, self.spec.shuffle_buffer)
            if not raw:
                return
            first_row = rows.first + pos.block_start * rows.stride
            kept = [
                doc
                for offset, doc in enumerate(raw)
                if shard != 0 or first_row + offset * rows.stride >= self.skip_head
            ]
            encoded = [_compact(ids) for ids in self.encode(kept)] if kept else []
            order = self._block_order(shard, pos.block_start, len(encoded))
            for i in range(pos.block_taken, len(encoded)):
                pos.block_taken = i + 1
                yield encoded[order[i]]
            pos.block_start, pos.block_taken = pos.block_start + len(raw), 0

    def _shard_order(self, epoch: int) -> list[int]:
        if not self.spec.shuffle:
            return list(self.shards)
        rng = np.random.default_rng([self.spec.seed, epoch, self.stream])
        return [self.shards[i] for i in rng.permutation(len(self.shards))]

    def _block_order(self, shard: int, block_start: int, size: int) -> np.ndarray:
        if not self.spec.shuffle:
            return np.arange(size)
        key = [self.spec.seed, self.position.epoch, self.stream, shard, block_start]
        return np.random.default_rng(key).permutation(size)


def pack_windows(documents: Iterator[Sequence[int]], spec: StreamSpec, holder: Any) -> Iterator[np.ndarray]:
    """Frame and concatenate documents, cut windows; ``holder.pending`` always holds the unemitted
    tokens and ``holder.windows`` counts the windows emitted."""
    seq_len = spec.seq_len
    pending = holder.pending
    for ids in documents:
        framed = frame_document(ids, spec.bos_id, spec.eos_id, spec.vocab_size)
        if framed.size == 0:
            continue
        pending = np.concatenate([pending, framed]) if pending.size else framed
        offset = 0
        while len(pending) - offset >= seq_len + 1:
            window = pending[offset : offset + seq_len + 1]
            offset += seq_len
            holder.pending = pending[offset:]
            holder.windows += 1
            yield window
        pending = pending[offset:]
        holder.pending = pending


@dataclass
class MixturePosition:
    """Documents drawn so far, windows emitted and the packed tokens not yet emitted."""

    draws: int = 0
    windows: int = 0
    pending: np.ndarray = field(default_factory=_no_tokens)


class MixedStream:
    """Logical stream ``stream`` of several sources, documents drawn by weight; packed like one stream.

    Draw ``n`` picks its source with a generator seeded by ``(seed, stream, n)``, so the sequence of
    sources is fixed by the seed and the position is just the draw count plus each source's own.
    """

    def __init__(self, components: Sequence[LogicalStream], weights: Sequence[float], stream: int) -> None:
        if len(components) != len(weights) or not components:
            raise ValueError("a mixture needs one weight per source and at least one source")
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, got {list(weights)}")
        self.components = list(components)
        self.probabilities = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.spec = components[0].spec
        self.stream = stream
        self.position = MixturePosition()

    def documents(self) -> Iterator[Sequence[int]]:
        streams = [component.documents() for component in self.components]
        while True:
            rng = np.random.default_rng([self.spec.seed, self.stream, self.position.draws])
            choice = int(rng.choice(len(streams), p=self.probabilities))
            ids = next(streams[choice])
            self.position.draws += 1
            yield ids

    def windows(self) -> Iterator[np.ndarray]:
        return pack_windows(self.documents(), self.spec, self.position)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mixture": _position_state(self.position),
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
        self.position = _position_from_state(MixturePosition, state["mixture"])


def _compact(ids: Sequence[int]) -> np.ndarray:
    """Token ids as an array (memory-map views stay views): a reader holds a block of documents per
    stream, and as Python lists they would take ~9x the memory."""
    return ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int32)


def _take(iterator: Iterator[Any], count: int) -> list[Any]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == count:
            break
    return out
