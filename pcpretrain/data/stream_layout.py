"""Which windows form each batch, and who computes them: logical streams, readers, the global order.

The corpus is split into ``num_streams`` *logical streams*, a number fixed by the config
(``data.streams``), never by the cluster. Global window ``g`` (counted from the start of training)
is window ``g // num_streams`` of stream ``g % num_streams``, and the optimizer step that begins at
window ``cursor`` trains on the global windows ``[cursor, cursor + batch_size)``. So the batches
are a function of the data settings and the seed alone.

A *reader* is one loader worker of one process (``num_readers = processes x max(workers, 1)``,
which must divide ``num_streams``). Reader ``rank + processes * worker`` computes the streams
``j % num_readers == reader``; every window of stream ``j`` is therefore trained on by rank
``j % processes``. Changing the number of processes or workers changes only who computes a
window, which is why a run can resume on any reader count that divides ``num_streams``.
"""

from __future__ import annotations

from dataclasses import dataclass


def divisors(number: int) -> list[int]:
    """The positive divisors of ``number``, ascending."""
    return [d for d in range(1, number + 1) if number % d == 0]


def check_reader_count(num_streams: int, processes: int, workers: int) -> None:
    """Raise ValueError naming the valid counts when ``processes x workers`` does not divide the streams."""
    readers = processes * max(workers, 1)
    if num_streams % readers == 0:
        return
    raise ValueError(
        f"data.streams={num_streams} cannot be divided among {processes} process(es) x "
        f"{max(workers, 1)} loader worker(s) = {readers} readers; processes x max(data.num_workers, 1) "
        f"must be one of {', '.join(map(str, divisors(num_streams)))} (changing data.streams instead "
        "changes the data order)"
    )


def windows_before(cursor: int, stream: int, num_streams: int) -> int:
    """How many windows of ``stream`` the global windows ``[0, cursor)`` contain."""
    return max(0, (cursor - stream + num_streams - 1) // num_streams)


@dataclass(frozen=True)
class ReaderLayout:
    """The assignment of logical streams to the readers of ``world_size`` processes."""

    num_streams: int
    world_size: int
    workers: int

    def __post_init__(self) -> None:
        check_reader_count(self.num_streams, self.world_size, self.workers)

    @property
    def readers_per_rank(self) -> int:
        """Loader workers per process; 0 workers means the process reads itself (one reader)."""
        return max(self.workers, 1)

    @property
    def num_readers(self) -> int:
        return self.world_size * self.readers_per_rank

    def reader(self, rank: int, worker: int) -> int:
        return rank + self.world_size * worker

    def streams_of(self, reader: int) -> list[int]:
        """The logical streams reader ``reader`` computes."""
        return list(range(reader, self.num_streams, self.num_readers))

    def worker_of(self, window: int) -> int:
        """Which loader worker (of the rank that trains on it) computes global window ``window``."""
        return (window % self.num_readers) // self.world_size

    def reader_windows(self, cursor: int, count: int, reader: int) -> list[int]:
        """The global windows of ``[cursor, cursor + count)`` that ``reader`` computes, in order."""
        first = cursor + (reader - cursor) % self.num_readers
        return list(range(first, cursor + count, self.num_readers))

    def rank_windows(self, cursor: int, count: int, rank: int) -> list[int]:
        """The global windows of ``[cursor, cursor + count)`` that ``rank`` trains on, in order."""
        first = cursor + (rank - cursor) % self.world_size
        return list(range(first, cursor + count, self.world_size))
