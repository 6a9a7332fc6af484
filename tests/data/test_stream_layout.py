"""Who computes which global window: every layout partitions the windows the same way."""

from __future__ import annotations

import pytest

from pcpretrain.data.stream_layout import ReaderLayout, check_reader_count, divisors, windows_before


@pytest.mark.parametrize(
    ("streams", "world", "workers"), [(16, 1, 0), (16, 2, 2), (16, 4, 4), (12, 3, 2), (8, 8, 1)]
)
@pytest.mark.parametrize(("cursor", "count"), [(0, 8), (5, 12), (37, 3)])
def test_readers_and_ranks_partition_the_steps_windows(
    streams: int, world: int, workers: int, cursor: int, count: int
) -> None:
    layout = ReaderLayout(streams, world, workers)
    window_range = list(range(cursor, cursor + count))
    by_rank = [layout.rank_windows(cursor, count, rank) for rank in range(world)]
    assert sorted(g for windows in by_rank for g in windows) == window_range
    for rank, windows in enumerate(by_rank):
        readers = [layout.reader(rank, worker) for worker in range(layout.readers_per_rank)]
        read = [layout.reader_windows(cursor, count, reader) for reader in readers]
        assert sorted(g for part in read for g in part) == windows
        for worker, part in enumerate(read):
            assert all(layout.worker_of(g) == worker for g in part)
            assert all(g % streams in layout.streams_of(readers[worker]) for g in part)


def test_an_indivisible_reader_count_is_refused_with_the_valid_counts() -> None:
    with pytest.raises(
        ValueError, match=r"3 process\(es\) x 1 loader worker\(s\) = 3 readers.*1, 2, 4, 8, 16"
    ):
        check_reader_count(16, 3, 0)
    with pytest.raises(ValueError, match="= 6 readers"):
        ReaderLayout(16, 2, 3)
    assert divisors(12) == [1, 2, 3, 4, 6, 12]


def test_windows_before_counts_each_streams_share() -> None:
    for cursor in range(40):
        for stream in range(7):
            assert windows_before(cursor, stream, 7) == sum(1 for g in range(cursor) if g % 7 == stream)
