"""Pack tokenized documents into one token stream and cut it into training windows.

The window rule: with `seq_len` L, window i is `tokens[i*L : i*L + L + 1]` (inputs are the first L
tokens, targets the last L). Consecutive windows overlap by one token, so every token after the
first is a target exactly once; documents longer than a window continue in the next one, and
document boundaries are marked by BOS/EOS rather than by padding. The only tokens never used as
targets are those of a final partial window shorter than L + 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_UINT16_LIMIT = int(np.iinfo(np.uint16).max) + 1


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest storage dtype for ids below `vocab_size`: uint16 when they fit, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > int(np.iinfo(np.uint32).max) + 1:
        raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")
    return np.dtype(np.uint16) if vocab_size <= _UINT16_LIMIT else np.dtype(np.uint32)


def frame_document(
    ids: Sequence[int] | np.ndarray, bos_id: int | None, eos_id: int | None, vocab_size: int
) -> np.ndarray:
    """One document as int64 ``[bos] + ids + [eos]`` (each marker only when configured); empty stays empty.

    Ids are checked against ``vocab_size`` so a tokenizer/model mismatch fails here rather than as a
    bad embedding lookup.
    """
    tokens = np.asarray(ids, dtype=np.int64).reshape(-1)
    if tokens.size == 0:
        return tokens
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    prefix = () if bos_id is None else (np.array([bos_id], dtype=np.int64),)
    suffix = () if eos_id is None else (np.array([eos_id], dtype=np.int64),)
    return np.concatenate([*prefix, tokens, *suffix]) if prefix or suffix else tokens


def check_special_ids(bos_id: int | None, eos_id: int | None, vocab_size: int) -> None:
    """BOS and EOS, when set, must be ids of the vocabulary."""
    for name, special in (("bos_id", bos_id), ("eos_id", eos_id)):
        if special is not None and not 0 <= special < vocab_size:
            raise ValueError(f"{name}={special} is outside the vocabulary [0, {vocab_size})")


def pack_documents(
    token_lists: Iterable[Sequence[int]],
    bos_id: int | None,
    eos_id: int | None,
    vocab_size: int,
) -> np.ndarray:
    """Concatenate documents as `[bos] + ids + [eos]` (see :func:`frame_document`).

    Empty documents are skipped (they would add only markers).
    """
    dtype = token_dtype(vocab_size)
    check_special_ids(bos_id, eos_id, vocab_size)
    pieces = [frame_document(ids, bos_id, eos_id, vocab_size) for ids in token_lists]
    pieces = [piece for piece in pieces if piece.size]
    if not pieces:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(pieces).astype(dtype)


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Number of full windows of `seq_len + 1` tokens (stride `seq_len`) in `n_tokens` tokens."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    return max(0, (n_tokens - 1) // seq_len)


def window_bounds(index: int, seq_len: int) -> tuple[int, int]:
    """Start and end (exclusive) offsets of window `index` in the token stream."""
    start = index * seq_len
    return start, start + seq_len + 1


def windows_view(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """All full windows as a read-only [num_windows, seq_len + 1] view (no copy)."""
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
    count = num_windows(len(tokens), seq_len)
    if count == 0:
        return np.zeros((0, seq_len + 1), dtype=tokens.dtype)
    used = tokens[: count * seq_len + 1]
    return np.lib.stride_tricks.sliding_window_view(used, seq_len + 1)[::seq_len]
