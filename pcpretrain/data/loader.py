"""Deterministic, resumable micro-batches over the packed windows of a token array.

Layout of one optimizer step: a global batch of `micro_batch_size * grad_accum_steps * world_size`
windows is taken, in order, from a per-epoch permutation. Rank r takes the contiguous share
`[r * A * B, (r + 1) * A * B)` of it (A accumulation steps, B micro-batch size) and cuts it into A
micro-batches of B consecutive windows. Hence one process with 2A accumulation steps sees, over a
step, exactly rank 0's micro-batches followed by rank 1's of a 2-rank run with A steps each, so
changing the data-parallel width at a fixed global batch leaves the optimizer's data unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pcpretrain.data.packing import windows_view

STATE_VERSION = 1
# Keys that must match between a saved state and the loader it is loaded into.
_GEOMETRY_KEYS = ("seq_len", "micro_batch_size", "grad_accum_steps", "world_size", "num_tokens", "shuffle")


class PackedBatches:
    """Iterator of optimizer steps, each a list of `grad_accum_steps` [micro_batch_size, seq_len + 1] tensors.

    Epochs roll over when the windows left in the epoch cannot fill a global batch: the remainder
    is dropped and the next epoch uses a fresh permutation seeded by (seed, epoch). With
    `shuffle=False` every epoch walks the windows in order.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        micro_batch_size: int,
        grad_accum_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        _check_positive(
            seq_len=seq_len,
            micro_batch_size=micro_batch_size,
            grad_accum_steps=grad_accum_steps,
            world_size=world_size,
        )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_tokens = len(tokens)
        self._windows = windows_view(np.asarray(tokens), seq_len)
        self._check_corpus_fills_a_batch()
        self.epoch = 0
        self.position = 0  # optimizer steps already taken in the current epoch
        self._order: np.ndarray | None = None  # permutation of the current epoch, built lazily

    @property
    def global_batch_size(self) -> int:
        """Windows consumed per optimizer step, over all ranks."""
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    @property
    def num_windows(self) -> int:
        return len(self._windows)

    @property
    def steps_per_epoch(self) -> int:
        return self.num_windows // self.global_batch_size

    @property
    def tokens_per_step(self) -> int:
        """Target tokens per optimizer step, over all ranks."""
        return self.global_batch_size * self.seq_len

    def next_step(self) -> list[torch.Tensor]:
        """This rank's micro-batches for the next optimizer step (int64, shape [B, seq_len + 1])."""
        if self.position >= self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = None
        start = self.position * self.global_batch_size + self.rank * self._rank_share
        share = self._epoch_order()[start : start + self._rank_share]
        self.position += 1
        batches = share.reshape(self.grad_accum_steps, self.micro_batch_size)
        return [torch.from_numpy(self._windows[ids].astype(np.int64)) for ids in batches]

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        while True:
            yield self.next_step()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position plus the geometry it is valid for (identical on every rank)."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "world_size": self.world_size,
            "num_tokens": self.num_tokens,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; the saved seed wins so the data order continues unchanged."""
        current = self.state_dict()
        missing = [key for key in current if key not in state]
        if missing:
            raise ValueError(f"data loader state is missing keys {missing}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"data loader state version {state['version']} is not {STATE_VERSION}")
        for key in _GEOMETRY_KEYS:
            if state[key] != current[key]:
                saved, now = state[key], current[key]
                raise ValueError(f"cannot resume data loader: {key} was {saved!r} when saved, is {now!r} now")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.steps_per_epoch:
            raise ValueError(
                f"invalid data loader position: epoch {epoch}, step {position} of {self.steps_per_epoch}"
            )
        self.seed = int(state["seed"])
        self.epoch = epoch
        self.position = position
        self._order = None

    @property
    def _rank_share(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.num_windows)
            else:
                self._order = np.arange(self.num_windows)
        return self._order

    def _check_corpus_fills_a_batch(self) -> None:
        if self.num_windows >= self.global_batch_size:
            return
        needed = self.global_batch_size * self.seq_len + 1
        raise ValueError(
            f"corpus too small: {self.num_tokens} tokens give {self.num_windows} windows of seq_len "
            f"{self.seq_len}, but one global batch (micro_batch_size {self.micro_batch_size} x "
            f"grad_accum_steps {self.grad_accum_steps} x world_size {self.world_size}) needs "
            f"{self.global_batch_size} windows = {needed} tokens"
        )


def validation_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int | None = None
) -> list[torch.Tensor]:
    """Fixed evaluation batches: windows in corpus order, the same on every call.

    The last batch may hold fewer than `batch_size` windows; nothing else is dropped.
    """
    _check_positive(seq_len=seq_len, batch_size=batch_size)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    windows = windows_view(np.asarray(tokens), seq_len)
    if len(windows) == 0:
        raise ValueError(
            f"validation corpus too small: {len(tokens)} tokens, one window of seq_len {seq_len} "
            f"needs {seq_len + 1}"
        )
    count = -(-len(windows) // batch_size)
    if max_batches is not None:
        count = min(count, max_batches)
    return [
        torch.from_numpy(windows[i * batch_size : (i + 1) * batch_size].astype(np.int64))
        for i in range(count)
    ]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
