"""Logical streams: disjoint and complete splitting, seeded shuffling, packing, exact resume."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from pcpretrain.data.in_memory import InMemoryShards
from pcpretrain.data.stream import LogicalStream, MixedStream, StreamSpec

BOS, EOS, VOCAB = 1, 2, 10_000


def corpus(n: int) -> list[list[int]]:
    """Document i starts with the unique id 100 + i, so every document can be recognised."""
    return [[100 + i] + [3 + (i * 7 + j) % 90 for j in range(i % 13)] for i in range(n)]


def identity(docs: list) -> list:
    return docs


def spec(num_shards: int, num_streams: int, **overrides) -> StreamSpec:
    values = dict(
        seq_len=16,
        seed=0,
        shuffle=True,
        shuffle_buffer=5,
        num_streams=num_streams,
        num_shards=num_shards,
        bos_id=BOS,
        eos_id=EOS,
        vocab_size=VOCAB,
    )
    return StreamSpec(**{**values, **overrides})


def one_epoch(stream: LogicalStream) -> list[int]:
    """Ids of the documents a stream yields in its first epoch."""
    seen = []
    for ids in stream.documents():
        if stream.position.epoch > 0:
            break
        seen.append(int(ids[0]))
    return seen


@pytest.mark.parametrize(("num_shards", "num_streams"), [(8, 4), (6, 4), (2, 4), (1, 3), (3, 8), (5, 16)])
def test_streams_are_pairwise_disjoint_and_cover_the_corpus(num_shards: int, num_streams: int) -> None:
    docs = corpus(197)
    source = InMemoryShards(docs, num_shards)
    per_stream = [
        one_epoch(LogicalStream(source, identity, spec(num_shards, num_streams), j))
        for j in range(num_streams)
    ]
    for a, b in itertools.combinations(per_stream, 2):
        assert not set(a) & set(b)
    assert sorted(itertools.chain(*per_stream)) == [d[0] for d in docs]


def test_with_fewer_shards_than_streams_each_stream_reads_one_shard() -> None:
    reads: list[tuple[int, int, int]] = []

    class Recording(InMemoryShards):
        def iter_shard(self, index: int, start: int = 0, stride: int = 1):
            reads.append((index, start, stride))
            return super().iter_shard(index, start, stride)

    source = Recording(corpus(100), 3)
    for j in range(8):
        one_epoch(LogicalStream(source, identity, spec(3, 8, shuffle=False), j))
    # streams 0, 3, 6 share shard 0 (every 3rd row); streams 2, 5 share shard 2 (every 2nd row)
    assert list(dict.fromkeys(reads)) == [
        (0, 0, 3),
        (1, 0, 3),
        (2, 0, 2),
        (0, 1, 3),
        (1, 1, 3),
        (2, 1, 2),
        (0, 2, 3),
        (1, 2, 3),
    ]


def test_skip_head_holds_out_the_first_documents_of_shard_zero() -> None:
    docs = corpus(40)
    source = InMemoryShards(docs, 4)
    head = {int(d[0]) for d in itertools.islice(source.iter_shard(0), 3)}
    seen = set().union(
        *(one_epoch(LogicalStream(source, identity, spec(4, 8), j, skip_head=3)) for j in range(8))
    )
    assert seen == {d[0] for d in docs} - head


def test_order_is_seeded_and_epochs_reshuffle() -> None:
    source = InMemoryShards(corpus(60), 3)
    first = one_epoch(LogicalStream(source, identity, spec(3, 1), 0))
    assert first == one_epoch(LogicalStream(source, identity, spec(3, 1), 0))
    assert first != one_epoch(LogicalStream(source, identity, spec(3, 1, seed=1), 0))
    stream = LogicalStream(source, identity, spec(3, 1), 0)
    docs = [int(ids[0]) for ids in itertools.islice(stream.documents(), 120)]
    assert sorted(docs[:60]) == sorted(docs[60:]) and docs[:60] != docs[60:]
    unshuffled = one_epoch(LogicalStream(source, identity, spec(3, 1, shuffle=False), 0))
    assert unshuffled == [d[0] for k in range(3) for d in corpus(60)[k::3]]


def framed(docs: Sequence[Sequence[int]]) -> list[int]:
    return [t for d in docs for t in [BOS, *d, EOS]]


def test_windows_are_the_framed_stream_cut_with_one_token_overlap() -> None:
    docs = corpus(30)
    docs[4] = [104] + [5] * 50  # longer than a window: split, not dropped
    source = InMemoryShards(docs, 1)
    stream = LogicalStream(source, identity, spec(1, 1, shuffle=False), 0)
    windows = list(itertools.islice(stream.windows(), 10))
    assert all(len(w) == 17 for w in windows)
    joined = [int(t) for t in windows[0]] + [int(t) for w in windows[1:] for t in w[1:]]
    assert joined == framed(docs)[: len(joined)]


def test_state_after_k_windows_continues_exactly() -> None:
    source = InMemoryShards(corpus(80), 3)
    straight = LogicalStream(source, identity, spec(3, 1), 0)
    expected = [w.copy() for w in itertools.islice(straight.windows(), 60)]
    first = LogicalStream(source, identity, spec(3, 1), 0)
    head = list(itertools.islice(first.windows(), 23))
    state = first.state_dict()
    resumed = LogicalStream(source, identity, spec(3, 1), 0)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(resumed.windows(), 37))
    assert all(np.array_equal(a, b) for a, b in zip(head + rest, expected, strict=True))


def test_resuming_with_other_settings_names_what_changed() -> None:
    source = InMemoryShards(corpus(20), 2)
    state = LogicalStream(source, identity, spec(2, 2), 0).state_dict()
    with pytest.raises(ValueError, match="num_streams: saved 2, now 4"):
        LogicalStream(source, identity, spec(2, 4), 0).load_state_dict(state)


def test_a_stream_without_documents_is_an_error_not_a_hang() -> None:
    source = InMemoryShards([[100]], 1)
    stream = LogicalStream(source, identity, spec(1, 2), 1)
    with pytest.raises(
        ValueError, match="logical stream 1 of data.streams=2 found no documents.*lower data.streams"
    ):
        next(stream.documents())


def mixture(weights: list[float], stream: int = 0) -> MixedStream:
    """Two sources whose documents are told apart by their first id (100+ and 5000+)."""
    a = InMemoryShards(corpus(50), 2)
    b = InMemoryShards([[5000 + i, 7, 7] for i in range(30)], 3)
    parts = [LogicalStream(a, identity, spec(2, 1), stream), LogicalStream(b, identity, spec(3, 1), stream)]
    return MixedStream(parts, weights, stream)


def test_mixture_draws_sources_by_weight_deterministically() -> None:
    drawn = [int(ids[0]) for ids in itertools.islice(mixture([3.0, 1.0]).documents(), 400)]
    share_b = sum(doc >= 5000 for doc in drawn) / len(drawn)
    assert 0.18 < share_b < 0.32
    assert drawn == [int(ids[0]) for ids in itertools.islice(mixture([3.0, 1.0]).documents(), 400)]


def test_mixture_resumes_exactly_and_refuses_changed_weights() -> None:
    expected = [w.copy() for w in itertools.islice(mixture([1.0, 1.0]).windows(), 50)]
    first = mixture([1.0, 1.0])
    head = list(itertools.islice(first.windows(), 17))
    resumed = mixture([1.0, 1.0])
    resumed.load_state_dict(first.state_dict())
    rest = list(itertools.islice(resumed.windows(), 33))
    assert all(np.array_equal(a, b) for a, b in zip(head + rest, expected, strict=True))
    with pytest.raises(ValueError, match="mixture weights changed"):
        mixture([2.0, 1.0]).load_state_dict(first.state_dict())
