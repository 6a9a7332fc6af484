"""The stateful loader: exact resume with worker processes, ranks x workers reading disjoint documents."""

from __future__ import annotations

import pytest
import torch

from pcpretrain.data.batches import PackedWindows, StreamComponent, StreamingBatches
from pcpretrain.data.in_memory import InMemoryShards
from pcpretrain.data.stream import StreamSpec

BOS, EOS = 1, 2


class Identity:
    def __call__(self, docs: list) -> list:
        return docs


def corpus(n: int) -> list[list[int]]:
    return [[1000 + i] + [3 + (i * 5 + j) % 50 for j in range(3 + i % 11)] for i in range(n)]


def batches(docs, *, rank=0, world=1, workers=2, micro=2, accum=2, shards=8) -> StreamingBatches:
    spec = StreamSpec(
        seq_len=12,
        seed=3,
        shuffle=True,
        shuffle_buffer=4,
        num_readers=world * max(workers, 1),
        num_shards=shards,
        bos_id=BOS,
        eos_id=EOS,
        vocab_size=5000,
    )
    dataset = PackedWindows([StreamComponent(InMemoryShards(docs, shards), Identity(), spec)], rank, workers)
    return StreamingBatches(dataset, micro_batch_size=micro, grad_accum_steps=accum, world_size=world)


def document_ids(windows: torch.Tensor) -> set[int]:
    """Ids of the documents that start inside these windows (the token after each BOS)."""
    return {row[i + 1] for row in windows.tolist() for i in range(len(row) - 1) if row[i] == BOS}


@pytest.mark.parametrize("workers", [0, 2])
def test_state_after_k_steps_continues_with_identical_batches(workers: int) -> None:
    docs = corpus(50)
    straight = batches(docs, workers=workers)
    expected = [straight.next_step() for _ in range(12)]
    first = batches(docs, workers=workers)
    for _ in range(5):
        first.next_step()
    state = first.state_dict()
    resumed = batches(docs, workers=workers)
    resumed.load_state_dict(state)
    for step in expected[5:]:
        assert all(torch.equal(a, b) for a, b in zip(resumed.next_step(), step, strict=True))


def test_two_ranks_with_two_workers_read_disjoint_documents_that_cover_the_corpus() -> None:
    docs = corpus(40)
    seen = []
    for rank in range(2):
        loader = batches(docs, rank=rank, world=2, workers=2)
        ids: set[int] = set()
        for _ in range(30):
            for micro in loader.next_step():
                ids |= document_ids(micro)
        seen.append(ids)
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {d[0] for d in docs}


def test_a_different_layout_on_resume_is_refused() -> None:
    state = batches(corpus(20), workers=2).state_dict()
    with pytest.raises(ValueError, match="num_workers: saved 2, now 0"):
        batches(corpus(20), workers=0).load_state_dict(state)
