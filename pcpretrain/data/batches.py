"""Micro-batches for the trainer: each step's windows, computed from the logical streams by loader workers.

Every loader worker of every process computes its logical streams (see
:mod:`pcpretrain.data.stream_layout`) and yields, once per optimizer step, its share of the step's
global windows together with its streams' positions right after them. The process merges its
workers' shares into its windows in global order and cuts them into micro-batches. The positions
that came with the last consumed step are exactly those to continue from, however far the loader
prefetched; the checkpoint stores them per logical stream, so a run resumes on any number of
processes and workers that divides ``data.streams``. The loader is never handed to
``accelerate.prepare``: the streams are split among the processes already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pcpretrain.data.stream import DocumentShards, Encoder, LogicalStream, MixedStream, StreamSpec
from pcpretrain.data.stream_layout import ReaderLayout, windows_before

STATE_FORMAT = "pcpretrain-logical-streams-1"
# Bits of each window's digest summed into a step's batch hash (the sum stays exact in int64).
_HASH_BITS = 40


@dataclass
class StreamComponent:
    """One source of the streams' documents: how to read and encode it, and its share of a mixture."""

    source: DocumentShards
    encoder: Encoder
    spec: StreamSpec
    weight: float = 1.0
    skip_head: int = 0


def build_stream(components: Sequence[StreamComponent], stream: int) -> LogicalStream | MixedStream:
    """Logical stream ``stream`` of the data: of one source, or drawn by weight from several."""
    streams = [LogicalStream(c.source, c.encoder, c.spec, stream, c.skip_head) for c in components]
    if len(streams) == 1:
        return streams[0]
    return MixedStream(streams, [c.weight for c in components], stream)


class StepShares(IterableDataset):
    """Per optimizer step, one reader's windows of the step (in global order) and its streams' states.

    Sources and encoders travel to the worker processes, so both must be picklable (the text encoder
    loads its tokenizer lazily inside each worker).
    """

    def __init__(
        self,
        components: Sequence[StreamComponent],
        layout: ReaderLayout,
        rank: int,
        batch_size: int,
        cursor: int,
        states: dict[int, dict[str, Any]],
    ) -> None:
        self.components = list(components)
        self.layout = layout
        self.rank = rank
        self.batch_size = batch_size
        self.cursor = cursor
        self.states = states

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[int, dict[str, Any]]]]:
        info = get_worker_info()
        reader = self.layout.reader(self.rank, info.id if info is not None else 0)
        streams = {j: build_stream(self.components, j) for j in self.layout.streams_of(reader)}
        for j, stream in streams.items():
            if j in self.states:
                stream.load_state_dict(self.states[j])
        windows = {j: stream.windows() for j, stream in streams.items()}
        num_streams, width = self.layout.num_streams, self.components[0].spec.seq_len + 1
        cursor = self.cursor
        while True:
            rows = []
            for g in self.layout.reader_windows(cursor, self.batch_size, reader):
                stream = streams[g % num_streams]
                if stream.position.windows != g // num_streams:
                    raise RuntimeError(
                        f"logical stream {g % num_streams} is at window {stream.position.windows}, "
                        f"expected {g // num_streams} for global window {g}"
                    )
                rows.append(next(windows[g % num_streams]))
            share = torch.from_numpy(np.stack(rows)) if rows else torch.zeros((0, width), dtype=torch.int64)
            yield share, {j: stream.state_dict() for j, stream in streams.items()}
            cursor += self.batch_size


def windows_hash(windows: torch.Tensor) -> int:
    """Sum of the windows' digests modulo 2**40: the same for a step's batch however it is divided."""
    total = 0
    for row in windows.numpy():
        digest = hashlib.blake2b(np.ascontiguousarray(row, dtype=np.int64).tobytes(), digest_size=8).digest()
        total += int.from_bytes(digest, "little") >> (64 - _HASH_BITS)
    return total % (1 << _HASH_BITS)


def combine_hashes(partial_sum: int) -> int:
    """The step's batch hash from the sum of every rank's :func:`windows_hash` (exact in JSON)."""
    return partial_sum % (1 << _HASH_BITS)


class StreamingBatches:
    """The trainer's source of micro-batches: ``grad_accum_steps`` of them per optimizer step."""

    def __init__(
        self,
        components: Sequence[StreamComponent],
        layout: ReaderLayout,
        rank: int,
        micro_batch_size: int,
        grad_accum_steps: int,
        hash_batches: bool = False,
    ) -> None:
        self.components = list(components)
        self.layout = layout
        self.rank = rank
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.batch_size = micro_batch_size * grad_accum_steps * layout.world_size
        self.hash_batches = hash_batches
        self.cursor = 0
        self.states: dict[int, dict[str, Any]] = {}
        # This rank's part of the last step's batch hash (see windows_hash), when hash_batches is set.
        self.last_hash = 0
        self._iterator: Iterator[tuple[torch.Tensor, dict[int, dict[str, Any]]]] | None = None

    def _loader(self) -> DataLoader:
        shares = StepShares(
            self.components, self.layout, self.rank, self.batch_size, self.cursor, dict(self.states)
        )
        workers = self.layout.workers
        return DataLoader(
            shares,
            batch_size=None,
            collate_fn=_unchanged,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
        )

    def next_step(self) -> list[torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self._loader())
        shares = [next(self._iterator) for _ in range(self.layout.readers_per_rank)]
        windows = self._merge([share for share, _ in shares])
        for _, states in shares:
            self.states.update(states)
        self.cursor += self.batch_size
        if self.hash_batches:
            self.last_hash = windows_hash(windows)
        if torch.cuda.is_available():
            windows = windows.pin_memory()
        return list(windows.split(self.micro_batch_size))

    def _merge(self, shares: list[torch.Tensor]) -> torch.Tensor:
        """This rank's windows of the step in global order, from its workers' shares."""
        if len(shares) == 1:
            return shares[0]
        offsets = np.cumsum([0] + [len(share) for share in shares])
        taken = [0] * len(shares)
        index = []
        for g in self.layout.rank_windows(self.cursor, self.batch_size, self.rank):
            worker = self.layout.worker_of(g)
            index.append(int(offsets[worker]) + taken[worker])
            taken[worker] += 1
        return torch.cat(shares)[index]

    def state_dict(self) -> dict[str, Any]:
        """The positions of this rank's logical streams after the last step (other ranks save theirs)."""
        mine = {j: state for j, state in self.states.items() if j % self.layout.world_size == self.rank}
        return {
            "format": STATE_FORMAT,
            "num_streams": self.layout.num_streams,
            "cursor": self.cursor,
            "streams": mine,
        }

    def load_state_dict(self, saved: Sequence[dict[str, Any]]) -> None:
        """Continue from the stream positions saved by every rank of the run, whatever its layout.

        Raises ValueError naming what does not fit (another stream count, other data settings, a
        position saved before logical streams existed, or a missing stream).
        """
        cursor, states = merge_saved_positions(saved, self.layout.num_streams)
        for j, state in states.items():
            stream = build_stream(self.components, j)
            stream.load_state_dict(state)
            expected = windows_before(cursor, j, self.layout.num_streams)
            if stream.position.windows != expected:
                raise ValueError(
                    f"the saved position of logical stream {j} has emitted {stream.position.windows} "
                    f"windows, but {expected} at global window {cursor}; the data state is inconsistent"
                )
        self.cursor, self.states = cursor, states
        self._iterator = None


def _unchanged(item: Any) -> Any:
    """The loader's conversion step, skipped: it would turn every stream's pending tokens into a tensor,
    each sent through its own shared-memory segment (~1 ms apiece)."""
    return item


def merge_saved_positions(
    saved: Sequence[dict[str, Any]], num_streams: int
) -> tuple[int, dict[int, dict[str, Any]]]:
    """The global window count and every logical stream's state from the ranks' saved positions."""
    if not saved:
        raise ValueError("the checkpoint holds no data position")
    if any(state.get("format") != STATE_FORMAT for state in saved):
        raise ValueError(
            "the data position was saved per loader worker, before logical streams (data.streams); it "
            "can only be continued by the pcpretrain version that wrote it"
        )
    saved_streams = {state["num_streams"] for state in saved}
    if saved_streams != {num_streams}:
        raise ValueError(f"data.streams: saved {sorted(saved_streams)}, now {num_streams}")
    cursors = {state["cursor"] for state in saved}
    if len(cursors) != 1:
        raise ValueError(f"the ranks saved different data positions (global windows {sorted(cursors)})")
    states: dict[int, dict[str, Any]] = {}
    for state in saved:
        states.update({int(j): stream for j, stream in state["streams"].items()})
    missing = sorted(set(range(num_streams)) - states.keys())
    if missing:
        raise ValueError(f"the checkpoint holds no position for logical streams {missing}")
    return cursors.pop(), states
