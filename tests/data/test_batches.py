"""The step loader: the same global batches on any process/worker layout, exact resume across layouts."""

from __future__ import annotations

import pytest
import torch

from pcpretrain.data.batches import StreamComponent, StreamingBatches, combine_hashes, windows_hash
from pcpretrain.data.in_memory import InMemoryShards
from pcpretrain.data.stream import StreamSpec
from pcpretrain.data.stream_layout import ReaderLayout

BOS, EOS, STREAMS, BATCH, MICRO = 1, 2, 8, 8, 2


class Identity:
    def __call__(self, docs: list) -> list:
        return docs


def corpus(n: int) -> list[list[int]]:
    return [[1000 + i] + [3 + (i * 5 + j) % 50 for j in range(3 + i % 11)] for i in range(n)]


def components(docs: list[list[int]], shards: int = 5) -> list[StreamComponent]:
    spec = StreamSpec(
        seq_len=12,
        seed=3,
        shuffle=True,
        shuffle_buffer=4,
        num_streams=STREAMS,
        num_shards=shards,
        bos_id=BOS,
        eos_id=EOS,
        vocab_size=5000,
    )
    return [StreamComponent(InMemoryShards(docs, shards), Identity(), spec)]


def loaders(docs: list[list[int]], world: int, workers: int) -> list[StreamingBatches]:
    """One loader per rank of a ``world``-process run with the global batch fixed at BATCH windows."""
    layout = ReaderLayout(STREAMS, world, workers)
    accum = BATCH // (MICRO * world)
    return [
        StreamingBatches(components(docs), layout, rank, MICRO, accum, hash_batches=True)
        for rank in range(world)
    ]


def global_batch(ranks: list[StreamingBatches]) -> list[tuple[int, ...]]:
    """The step's windows of every rank, as a sorted list (the order inside a step does not matter)."""
    windows = torch.cat([torch.cat(loader.next_step()) for loader in ranks])
    return sorted(tuple(row) for row in windows.tolist())


def run(docs, world: int, workers: int, steps: int, switch: tuple[int, int, int] | None = None) -> list:
    """``steps`` global batches; ``switch=(step, world, workers)``: saved there, resumed on that layout."""
    ranks = loaders(docs, world, workers)
    out = []
    for step in range(steps):
        if switch is not None and step == switch[0]:
            saved = [loader.state_dict() for loader in ranks]
            ranks = loaders(docs, switch[1], switch[2])
            for loader in ranks:
                loader.load_state_dict(saved)
        out.append(global_batch(ranks))
    return out


@pytest.mark.parametrize(("world", "workers"), [(2, 0), (2, 2), (4, 2), (1, 4)])
def test_the_global_batches_do_not_depend_on_processes_or_workers(world: int, workers: int) -> None:
    docs = corpus(60)
    assert run(docs, world, workers, 25) == run(docs, 1, 0, 25)


@pytest.mark.parametrize(("before", "after"), [((2, 2), (1, 0)), ((1, 0), (2, 2)), ((4, 0), (2, 1))])
def test_a_run_resumes_exactly_on_another_layout(before: tuple[int, int], after: tuple[int, int]) -> None:
    docs = corpus(60)
    assert run(docs, *before, 20, switch=(7, *after)) == run(docs, 1, 0, 20)


def test_a_rank_trains_on_its_windows_in_global_order() -> None:
    docs = corpus(60)
    single = loaders(docs, 1, 0)[0]
    two_workers = loaders(docs, 1, 2)[0]
    for _ in range(6):
        assert all(
            torch.equal(a, b) for a, b in zip(single.next_step(), two_workers.next_step(), strict=True)
        )


def test_batch_hashes_add_up_over_ranks_to_the_single_process_hash() -> None:
    docs = corpus(60)
    single, pair = loaders(docs, 1, 0), loaders(docs, 2, 2)
    for _ in range(4):
        global_batch(single)
        global_batch(pair)
        assert combine_hashes(sum(loader.last_hash for loader in pair)) == combine_hashes(single[0].last_hash)
    window = torch.arange(13).unsqueeze(0)
    assert windows_hash(window) != windows_hash(window + 1)


def test_positions_that_do_not_fit_are_refused_with_the_reason() -> None:
    docs = corpus(40)
    ranks = loaders(docs, 2, 0)
    for loader in ranks:
        loader.next_step()
    saved = [loader.state_dict() for loader in ranks]
    with pytest.raises(ValueError, match=r"no position for logical streams \[1, 3, 5, 7\]"):
        loaders(docs, 1, 0)[0].load_state_dict(saved[:1])
    with pytest.raises(ValueError, match="before logical streams"):
        loaders(docs, 1, 0)[0].load_state_dict([{"geometry": {}, "loader": {}}])
    other = StreamingBatches(components(docs), ReaderLayout(4, 1, 0), 0, MICRO, 4)
    with pytest.raises(ValueError, match=r"data.streams: saved \[8\], now 4"):
        other.load_state_dict(saved)
