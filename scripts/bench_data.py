"""Data-pipeline throughput: tokens/s of packed training windows, per loader-worker count, and
tokens/s of pre-tokenizing (``tokenize_to_shards``) per tokenize-worker count and tokenizer kind.

Compares on-the-fly tokenization of text files with memory-mapped token shards of the same text,
side by side in one process. Target: with 4 workers, at least 5 x the ~50k tokens/s one H100
consumes training the 1B model (250k tokens/s). Pre-tokenizing runs the SentencePiece tokenizer
(``--tokenizer``, else one trained here) and a byte-level BPE ``tokenizer.json`` (``--hf-tokenizer``,
else one trained here) over the corpus repeated ``--tokenize-repeat`` times (so start-up does not
dominate); target: at least 0.5M tokens/s per core with the hf tokenizer.

    python scripts/bench_data.py --files '../shared/data/milton/train-*.jsonl' \\
        --tokenizer ../shared/tokenizers/llama2/tokenizer.model --workers 1 2 4
    python scripts/bench_data.py --tiny          # a seconds-long smoke run on generated text"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from pcpretrain.data.batches import StreamComponent, StreamingBatches
from pcpretrain.data.pipeline import PretokenizedEncoder, TextEncoder
from pcpretrain.data.pretokenize import tokenize_to_shards
from pcpretrain.data.sources import TextSource
from pcpretrain.data.stream import DocumentShards, StreamSpec
from pcpretrain.data.stream_layout import ReaderLayout
from pcpretrain.data.token_shards import TokenShards
from pcpretrain.data.tokenizer import Tokenizer, load_tokenizer, train_bpe, train_sentencepiece

# Size of the byte-level BPE trained when no --hf-tokenizer is given.
BPE_VOCAB = 16_000
# The loader's geometry: the default data.streams, micro-batches of 8 windows, 4 per optimizer step.
STREAMS, MICRO_BATCH, ACCUMULATION = 16, 8, 4


def measure(
    source: DocumentShards, encoder, tokenizer: Tokenizer, workers: int, seq_len: int, batches: int
) -> float:
    """Tokens/s the loader delivers to one process once its workers are warm: steps of 4 micro-batches
    of 8 windows, from the default 16 logical streams."""
    spec = StreamSpec(
        seq_len=seq_len,
        seed=0,
        shuffle=True,
        shuffle_buffer=1024,
        num_streams=STREAMS,
        num_shards=source.num_shards,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        vocab_size=tokenizer.vocab_size,
    )
    layout = ReaderLayout(STREAMS, world_size=1, workers=workers)
    loader = StreamingBatches([StreamComponent(source, encoder, spec)], layout, 0, MICRO_BATCH, ACCUMULATION)
    loader.next_step()  # start the workers
    start = time.perf_counter()
    for _ in range(batches):
        loader.next_step()
    return batches * MICRO_BATCH * ACCUMULATION * seq_len / (time.perf_counter() - start)


def generated_corpus(directory: Path, files: int = 4, documents: int = 400) -> list[str]:
    """Pseudo-text with a few thousand distinct words, deterministic, in ``files`` jsonl shards."""
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "de", "pa", "qui", "ber", "an", "or", "el"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    paths = []
    for k in range(files):
        path = directory / f"part-{k}.jsonl"
        lines = [
            json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(100, 600)))})
            for _ in range(documents)
        ]
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths


def repeated_files(files: list[str], times: int, directory: Path, head: int | None = None) -> list[str]:
    """Each input file's rows (the first ``head`` of them, if given) ``times`` over, one output file
    per input: a corpus as long (or short) as needed with the same shard count and text."""
    if times == 1 and head is None:
        return files
    text = TextSource.from_files(files)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(text.num_shards):
        documents = itertools.islice(text.iter_shard(k), head)
        rows = "".join(json.dumps({"text": doc}) + "\n" for doc in documents)
        path = directory / f"repeated-{k:05d}.jsonl"
        path.write_text(rows * times)
        paths.append(str(path))
    return paths


def measure_tokenization(
    source: TextSource, tokenizer: Tokenizer, workers: int, out_dir: Path
) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds of this process and its workers) of ``tokenize_to_shards``
    into a fresh directory, worker start-up included. CPU time is what a core costs on a machine
    other jobs share, where wall time is not."""
    before = _cpu_seconds()
    start = time.perf_counter()
    shards = tokenize_to_shards(source, tokenizer, out_dir, workers=workers, overwrite=True)
    return shards.total_tokens, time.perf_counter() - start, _cpu_seconds() - before


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (the pool's workers are joined)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def tokenization_table(
    files: list[str], tokenizers: list[Tokenizer], workers: list[int], repeat: int, tmp_dir: Path
) -> None:
    """Print tokens/s of pre-tokenizing ``files`` (repeated) for each tokenizer and worker count.

    "steady" leaves out the fixed cost of a run (worker start-up, tokenizer copy, final checks),
    measured as the time to tokenize one document per shard: what a long corpus runs at.
    """
    source = TextSource.from_files(repeated_files(files, repeat, tmp_dir / "repeated"))
    heads = TextSource.from_files(repeated_files(files, 1, tmp_dir / "heads", head=1))
    print(f"\npre-tokenizing {source.num_shards} shards ({', '.join(files)}, each {repeat} times over)")
    print(
        f"{'tokenizer':36} {'workers':>7} {'tokens':>11} {'seconds':>7} {'tokens/s':>10} "
        f"{'per worker':>10} {'steady/wkr':>10} {'per CPU-s':>10}"
    )
    for tokenizer in tokenizers:
        name = f"{tokenizer.kind} {Path(tokenizer.location).name} ({tokenizer.vocab_size})"
        for count in workers:
            fixed = measure_tokenization(heads, tokenizer, count, tmp_dir / "tokenize-bench")[1]
            tokens, seconds, cpu = measure_tokenization(source, tokenizer, count, tmp_dir / "tokenize-bench")
            rate, per = tokens / seconds, max(count, 1)
            # Too short a run to tell its steady rate from its fixed cost: "-".
            steady = f"{tokens / (seconds - fixed) / per:,.0f}" if seconds > 1.1 * fixed else "-"
            print(
                f"{name:36} {count:7d} {tokens:11,d} {seconds:7.1f} {rate:10,.0f} "
                f"{rate / per:10,.0f} {steady:>10} {tokens / cpu:10,.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", nargs="*", help="text files (jsonl/parquet/txt) to read")
    parser.add_argument(
        "--tokenizer", help="tokenizer .model, tokenizer.json, directory or Hub id (else one is trained)"
    )
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--hf-tokenizer", help="a tokenizer.json (or its directory) to pre-tokenize with")
    parser.add_argument("--tokenize-workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--tokenize-repeat", type=int, default=20, help="corpus copies to pre-tokenize")
    parser.add_argument("--tiny", action="store_true", help="generated corpus, few batches (smoke test)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        files = args.files
        if args.tiny or not files:
            files = generated_corpus(tmp_dir)
            args.seq_len, args.batches, args.workers = (
                (128, 10, [0, 2]) if args.tiny else (args.seq_len, args.batches, args.workers)
            )
        text = TextSource.from_files(files)
        text.check()
        if args.tokenizer:
            tokenizer = load_tokenizer(args.tokenizer)
        else:
            head = [t for t in text.iter_shard(0) if t][:2000]
            tokenizer = train_sentencepiece(head, 2000, tmp_dir / "tok.model")
        shards = tokenize_to_shards(text, tokenizer, tmp_dir / "shards")
        sources = {
            "text (tokenized in workers)": (text, TextEncoder(tokenizer.location)),
            "token shards (memory-mapped)": (TokenShards(tmp_dir / "shards"), PretokenizedEncoder()),
        }
        print(f"{'source':32} {'workers':>7} {'tokens/s':>12} {'per worker':>12}")
        for name, (source, encoder) in sources.items():
            for workers in args.workers:
                rate = measure(source, encoder, tokenizer, workers, args.seq_len, args.batches)
                print(f"{name:32} {workers:7d} {rate:12,.0f} {rate / max(workers, 1):12,.0f}")
        print(f"corpus: {shards.total_tokens:,} tokens in {shards.num_shards} shards; seq_len {args.seq_len}")
        if args.hf_tokenizer:
            hf = load_tokenizer(args.hf_tokenizer)
        else:
            hf = train_bpe(text.first_documents(2000), BPE_VOCAB, tmp_dir / "bpe")
        repeat, workers = (1, [0]) if args.tiny else (args.tokenize_repeat, args.tokenize_workers)
        tokenization_table(files, [tokenizer, hf], workers, repeat, tmp_dir)


if __name__ == "__main__":
    main()
