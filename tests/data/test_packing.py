"""Packing documents into a token stream and the window rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pcpretrain.data.packing import num_windows, pack_documents, token_dtype, window_bounds, windows_view

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


def test_bos_and_eos_wrap_each_document() -> None:
    packed = pack_documents([[5, 6], [7], [8, 9, 10]], bos_id=1, eos_id=2, vocab_size=32)
    assert packed.tolist() == [1, 5, 6, 2, 1, 7, 2, 1, 8, 9, 10, 2]


@pytest.mark.parametrize(("bos", "eos", "expected"), [(None, 2, [5, 6, 2, 7, 2]), (1, None, [1, 5, 6, 1, 7])])
def test_only_configured_markers(bos: int | None, eos: int | None, expected: list[int]) -> None:
    assert pack_documents([[5, 6], [7]], bos, eos, 32).tolist() == expected


def test_empty_documents_are_skipped() -> None:
    assert pack_documents([[], [4], []], 1, 2, 8).tolist() == [1, 4, 2]
    assert pack_documents([], 1, 2, 8).size == 0


def test_dtype_follows_vocab_size() -> None:
    assert pack_documents([[3]], 1, 2, 32000).dtype == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    big = pack_documents([[70000]], 1, 2, 100_000)
    assert big.dtype == np.uint32 and big.tolist() == [1, 70000, 2]


def test_out_of_vocab_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="token id 40"):
        pack_documents([[3, 40]], 1, 2, 32)
    with pytest.raises(ValueError, match="eos_id=32"):
        pack_documents([[3]], 1, 32, 32)


@pytest.mark.parametrize(
    ("n_tokens", "seq_len", "expected"), [(0, 4, 0), (4, 4, 0), (5, 4, 1), (8, 4, 1), (9, 4, 2)]
)
def test_num_windows(n_tokens: int, seq_len: int, expected: int) -> None:
    assert num_windows(n_tokens, seq_len) == expected


def test_every_target_exactly_once_and_documents_split_across_windows() -> None:
    seq_len = 4
    tokens = pack_documents([list(range(3, 13)), [13, 14]], 1, 2, 32)  # a 10-token document, then a short one
    windows = windows_view(tokens, seq_len)
    assert windows.shape == (num_windows(len(tokens), seq_len), seq_len + 1) == (3, 5)
    for i, window in enumerate(windows):
        start, end = window_bounds(i, seq_len)
        assert window.tolist() == tokens[start:end].tolist()
    targets = windows[:, 1:].reshape(-1)
    assert targets.tolist() == tokens[1 : 1 + len(targets)].tolist()
    assert windows[0].tolist() == [1, 3, 4, 5, 6] and windows[1].tolist() == [6, 7, 8, 9, 10]
    assert len(tokens) - 1 - len(targets) == 3, "only the final partial window is left out"


def test_windows_view_is_a_view() -> None:
    tokens = np.arange(21, dtype=np.uint16)
    windows = windows_view(tokens, 5)
    assert np.shares_memory(windows, tokens)
    assert windows_view(tokens[:3], 5).shape == (0, 6)


def test_real_text_round_trips_through_packing() -> None:
    path = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
    shard = SHARED / "data" / "milton" / "validation.jsonl"
    if not (path.exists() and shard.exists()):
        pytest.skip(f"shared test data not found under {SHARED.resolve()}")
    from pcpretrain.data.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    texts = [json.loads(line)["text"] for line in shard.read_text(encoding="utf-8").splitlines()]
    packed = pack_documents(tok.encode_batch(texts), tok.bos_id, tok.eos_id, tok.vocab_size)
    assert packed.dtype == np.uint16
    bos_positions = np.flatnonzero(packed == tok.bos_id)
    assert len(bos_positions) == len(texts) == int((packed == tok.eos_id).sum())
    segments = np.split(packed, bos_positions[1:])
    assert [tok.decode(seg[1:-1].tolist()) for seg in segments] == texts
