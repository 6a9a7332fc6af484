"""The fixed held-out set: the same windows at every evaluation, divided between ranks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from pcpretrain.data.packing import pack_documents, windows_view


def validation_batches(
    documents: Iterable[Sequence[int]],
    *,
    seq_len: int,
    bos_id: int | None,
    eos_id: int | None,
    vocab_size: int,
    batch_size: int,
    max_batches: int | None,
    rank: int = 0,
    world_size: int = 1,
) -> list[torch.Tensor]:
    """Pack the held-out documents like training data; rank ``r`` evaluates batches ``r, r + world, ...``.

    The last batch may be smaller; the evaluation weights batches by their windows and reduces the
    sums over ranks, so the loss is the token mean over the whole set whatever the split.
    """
    tokens = pack_documents(documents, bos_id, eos_id, vocab_size)
    windows = windows_view(tokens, seq_len)
    if len(windows) == 0:
        raise ValueError(
            f"the validation set is too small: {len(tokens)} tokens, one window of data.seq_len={seq_len} "
            f"needs {seq_len + 1}"
        )
    starts = range(0, len(windows), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    return [torch.from_numpy(windows[s : s + batch_size].astype(np.int64)) for s in starts][rank::world_size]
