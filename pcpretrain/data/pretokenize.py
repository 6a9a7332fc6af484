"""Tokenize a text source once into token shards: one output shard per input shard, in parallel
processes, resumable after a kill (the bookkeeping is in :mod:`pcpretrain.data.tokenize_partial`).

Workers are spawned, not forked (the ``tokenizers`` library's thread pool does not survive a fork),
and each runs one tokenizer thread, so N workers use N cores. A worker loads the tokenizer from the
copy in the partial directory, so the ids come from exactly the recorded tokenizer (and a Hub
tokenizer is not fetched again per worker).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpretrain.data.stream import DocumentShards
from pcpretrain.data.token_shard_writer import (
    ShardFile,
    build_meta,
    finished_shard,
    move_into_place,
    refuse_overwrite,
    tokenizer_fields,
    write_json_durably,
)
from pcpretrain.data.token_shards import META_FILE, TOKENIZER_DIR, TokenShards
from pcpretrain.data.tokenize_partial import open_partial, partial_dir, run_settings

if TYPE_CHECKING:
    from pcpretrain.data.tokenizer_base import Tokenizer

log = logging.getLogger(__name__)


def tokenize_to_shards(
    source: DocumentShards,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    description: str = "",
    batch_size: int = 1024,
    overwrite: bool = False,
    workers: int = 1,
) -> TokenShards:
    """Write ``source``'s documents as token shards in ``out_dir``; keeping its shard count keeps
    readers parallel, and the shard count bounds the useful ``workers``.

    ``workers`` processes tokenize whole shards (0: all in this process, with the tokenizer's own
    threading). Work goes into ``<out_dir>.partial``; calling again with the same arguments after
    a crash or kill continues from the finished shards, and the output is the same bytes as an
    uninterrupted run with any number of workers.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = tokenize in this process), got {workers}")
    out_dir = Path(out_dir)
    refuse_overwrite(out_dir, overwrite)
    partial = partial_dir(out_dir)
    continued = open_partial(partial, run_settings(source, tokenizer, description), tokenizer, overwrite)
    if not (partial / META_FILE).is_file():
        job = _ShardJob(source, tokenizer, partial, batch_size)
        _tokenize_all(job, workers, continued, description)
    refuse_overwrite(out_dir, overwrite)
    move_into_place(partial, out_dir)
    return TokenShards(out_dir)


def _tokenize_all(job: _ShardJob, workers: int, continued: bool, description: str) -> None:
    """Tokenize the shards not finished yet, then write meta.json: the partial directory is complete."""
    total, vocab_size = job.source.num_shards, job.vocab_size
    done = {k: entry for k in range(total) if (entry := finished_shard(job.directory, k, vocab_size))}
    if continued:
        log.info("continuing %s: %d of %d shards already done", job.directory, len(done), total)
    done.update(_run(job, [k for k in range(total) if k not in done], workers, len(done)))
    fields = tokenizer_fields(job.kind, job.fingerprint, job.directory)
    meta = build_meta(vocab_size, fields, [done[k] for k in range(total)], description)
    write_json_durably(job.directory / META_FILE, meta)


class _ShardJob:
    """What every shard's tokenization needs; pickled once per worker process."""

    def __init__(
        self, source: DocumentShards, tokenizer: Tokenizer, directory: Path, batch_size: int
    ) -> None:
        self.source = source
        self.tokenizer: Tokenizer | None = tokenizer
        self.kind = tokenizer.kind
        self.fingerprint = tokenizer.fingerprint
        self.vocab_size = tokenizer.vocab_size
        self.directory = directory
        self.batch_size = batch_size

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "tokenizer": None}  # a worker loads the recorded copy instead

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            from pcpretrain.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(self.directory / TOKENIZER_DIR)
            if tokenizer.fingerprint != self.fingerprint:
                raise ValueError(
                    f"the tokenizer copy in {self.directory / TOKENIZER_DIR} loads with fingerprint "
                    f"{tokenizer.fingerprint}, expected {self.fingerprint}; delete {self.directory}"
                )
            tokenizer.use_one_thread()  # only workers load it here, and they run one per core
            self.tokenizer = tokenizer
        return self.tokenizer

    def __call__(self, index: int) -> tuple[int, dict[str, Any], float]:
        """Tokenize input shard ``index`` into output shard ``index``; (index, meta entry, seconds)."""
        start = time.perf_counter()
        tokenizer = self._tokenizer()
        shard = ShardFile(self.directory, index, self.vocab_size)
        try:
            for texts in _batched(self.source.iter_shard(index), self.batch_size):
                for ids in tokenizer.encode_batch([text for text in texts if text]):
                    shard.add(ids)
            entry = shard.finish()
        except BaseException:
            shard.discard()
            raise
        return index, entry, time.perf_counter() - start


def _run(job: _ShardJob, todo: list[int], workers: int, already: int) -> dict[int, dict[str, Any]]:
    """Tokenize the ``todo`` shards, in this process or in ``workers`` spawned ones; logs each."""
    results: dict[int, dict[str, Any]] = {}
    total = job.source.num_shards

    def record(index: int, entry: dict[str, Any], seconds: float) -> None:
        results[index] = entry
        log.info(
            "shard %d/%d done (%s): %s documents, %s tokens in %.1f s (%s tokens/s); %d of %d shards done",
            index + 1,
            total,
            job.source.describe_shard(index),
            f"{entry['documents']:,}",
            f"{entry['tokens']:,}",
            seconds,
            f"{entry['tokens'] / max(seconds, 1e-9):,.0f}",
            already + len(results),
            total,
        )

    try:
        if workers == 0 or not todo:
            for index in todo:
                record(*job(index))
            return results
        with ProcessPoolExecutor(
            min(workers, len(todo)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(job,),
        ) as pool:
            futures = [pool.submit(_work, index) for index in todo]
            try:
                for future in as_completed(futures):
                    record(*future.result())
            except BaseException:
                pool.shutdown(cancel_futures=True)  # running shards still finish: a rerun skips them
                raise
    except BrokenProcessPool as err:
        raise RuntimeError(
            f"a tokenize worker process died ({err}); {len(results) + already} of {total} shards are "
            f"kept in {job.directory}: run the same command again to continue"
        ) from err
    except BaseException:
        log.warning(
            "stopped with %d of %d shards done; they are kept in %s: run the same command again to continue",
            already + len(results),
            total,
            job.directory,
        )
        raise
    return results


_JOB: _ShardJob | None = None


def _start_worker(job: _ShardJob) -> None:
    """One tokenizer thread per worker process (Rayon reads this when its pool first starts)."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    global _JOB
    _JOB = job


def _work(index: int) -> tuple[int, dict[str, Any], float]:
    assert _JOB is not None, "_start_worker runs first in every worker"
    return _JOB(index)


def _batched(iterator: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(iterator, size)):
        yield batch
