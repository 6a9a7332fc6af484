"""Micro-batches for the trainer from per-reader streams, through a stateful ``DataLoader``.

Each loader worker of each rank runs its own :class:`~pcpretrain.data.stream.ReaderStream`, so
tokenization and packing happen in the workers. ``torchdata``'s ``StatefulDataLoader`` records every
worker's stream position together with its own round-robin position, which makes the state after
``k`` batches enough to continue with batch ``k + 1`` exactly. The loader is never handed to
``accelerate.prepare``: the streams are sharded already and must not be sharded a second time.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from pcpretrain.data.stream import DocumentShards, Encoder, MixedStream, ReaderStream, StreamSpec

# torchdata 0.11 calls a deprecated torch hook on every iterator start; the notice is not actionable.
warnings.filterwarnings("ignore", message=".set_vital. is deprecated", category=UserWarning)


@dataclass
class StreamComponent:
    """One source of a reader's documents: how to read and encode it, and its share of a mixture."""

    source: DocumentShards
    encoder: Encoder
    spec: StreamSpec
    weight: float = 1.0
    skip_head: int = 0


class PackedWindows(IterableDataset):
    """The windows of reader ``rank x workers + worker``; its state is that reader's position.

    With several components the reader draws documents from them by weight (a mixture). Sources and
    encoders travel to the worker processes, so both must be picklable (the text encoder loads its
    SentencePiece model lazily inside each worker).
    """

    def __init__(self, components: Sequence[StreamComponent], rank: int, num_workers: int) -> None:
        self.components = list(components)
        self.rank = rank
        self.num_workers = num_workers
        self.readers_per_rank = max(num_workers, 1)
        self._stream: ReaderStream | MixedStream | None = None
        self._restored: dict[str, Any] | None = None

    def _new_stream(self) -> ReaderStream | MixedStream:
        info = get_worker_info()
        reader = self.rank * self.readers_per_rank + (info.id if info is not None else 0)
        streams = [ReaderStream(c.source, c.encoder, c.spec, reader, c.skip_head) for c in self.components]
        stream = (
            streams[0]
            if len(streams) == 1
            else MixedStream(streams, [c.weight for c in self.components], reader)
        )
        if self._restored is not None:
            stream.load_state_dict(self._restored)
        return stream

    def __iter__(self) -> Iterator[torch.Tensor]:
        self._stream = self._new_stream()
        for window in self._stream.windows():
            yield torch.from_numpy(window)

    def state_dict(self) -> dict[str, Any]:
        if self._stream is not None:
            return self._stream.state_dict()
        return self._restored or {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = state or None


class StreamingBatches:
    """The trainer's source of micro-batches: ``grad_accum_steps`` of them per optimizer step."""

    def __init__(self, dataset: PackedWindows, micro_batch_size: int, grad_accum_steps: int, world_size: int):
        self.grad_accum_steps = grad_accum_steps
        self.geometry = {
            "world_size": world_size,
            "num_workers": dataset.num_workers,
            "micro_batch_size": micro_batch_size,
            "grad_accum_steps": grad_accum_steps,
        }
        workers = dataset.num_workers
        self.loader = StatefulDataLoader(
            dataset,
            batch_size=micro_batch_size,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        self._iterator: Iterator[torch.Tensor] | None = None

    def next_step(self) -> list[torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        return [next(self._iterator) for _ in range(self.grad_accum_steps)]

    def state_dict(self) -> dict[str, Any]:
        return {"geometry": dict(self.geometry), "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("geometry", {})
        changed = [
            f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in self.geometry.items() if saved.get(k) != v
        ]
        if changed:
            raise ValueError(
                "the data position was saved with another layout (" + "; ".join(changed) + "); resuming "
                "needs the same processes, loader workers and batch geometry"
            )
        self.loader.load_state_dict(state["loader"])
        self._iterator = None
