"""The token-shards format: round trip, atomic writes, and validation at open."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pcpretrain.data import token_shard_writer
from pcpretrain.data.token_shard_writer import TokenShardWriter
from pcpretrain.data.token_shards import FORMAT_NAME, FORMAT_VERSION, TokenShards
from pcpretrain.data.tokenizer import load_tokenizer
from pcpretrain.files import sha256_file

VOCAB = 300


@dataclass
class FileTokenizer:
    """What the format needs of a tokenizer: a kind, a fingerprint and files to copy (any bytes)."""

    model: Path
    vocab_size: int = VOCAB
    kind: str = "sentencepiece"

    @property
    def fingerprint(self) -> str:
        return sha256_file(self.model)

    @property
    def location(self) -> Path:
        return self.model

    def save_files(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copyfile(self.model, out_dir / "tokenizer.model"))]


@pytest.fixture
def tokenizer(tmp_path: Path) -> FileTokenizer:
    path = tmp_path / "tok" / "spm.model"
    path.parent.mkdir()
    path.write_bytes(b"not a real sentencepiece model\x00\x01\x02")
    return FileTokenizer(path)


def random_docs(rng: np.random.Generator, count: int, vocab: int = VOCAB) -> list[np.ndarray]:
    return [rng.integers(0, vocab, size=int(rng.integers(1, 40))) for _ in range(count)]


def write_corpus(out: Path, tokenizer: FileTokenizer, shards: list[list]) -> None:
    with TokenShardWriter(out, tokenizer, source="unit test") as writer:
        for docs in shards:
            writer.begin_shard()
            for doc in docs:
                writer.add_document(doc)


@pytest.fixture
def corpus(tmp_path: Path, tokenizer: FileTokenizer) -> tuple[Path, list[list[np.ndarray]]]:
    """Two small shards written to disk, with the documents that went in."""
    rng = np.random.default_rng(1)
    shards = [random_docs(rng, 5), random_docs(rng, 4)]
    out = tmp_path / "corpus"
    write_corpus(out, tokenizer, shards)
    return out, shards


def test_round_trip(tmp_path: Path, tokenizer: FileTokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_shard_writer, "_FLUSH_TOKENS", 7)  # exercise many buffered appends
    rng = np.random.default_rng(0)
    shards = [random_docs(rng, 6), random_docs(rng, 3), random_docs(rng, 8)]
    out = tmp_path / "corpus"
    with TokenShardWriter(out, tokenizer, source="random docs") as writer:
        for k, docs in enumerate(shards):
            writer.begin_shard()
            for i, doc in enumerate(docs):
                writer.add_document(doc.tolist() if i % 2 else doc)
                if k == 1 and i == 0:
                    writer.add_document([])  # skipped, not stored as an empty document

    reader = TokenShards(out)
    assert reader.num_shards == 3 and reader.vocab_size == VOCAB and reader.dtype == np.uint16
    assert reader.total_tokens == sum(len(d) for docs in shards for d in docs)
    for k, docs in enumerate(shards):
        assert reader.num_documents(k) == len(docs)
        assert reader.num_tokens(k) == sum(len(d) for d in docs)
        read = list(reader.iter_shard(k))
        assert len(read) == len(docs)
        for got, want in zip(read, docs, strict=True):
            assert got.dtype == np.uint16 and np.array_equal(got, want)
        assert np.array_equal(reader.document(k, len(docs) - 1), docs[-1])
        assert (out / f"shard_{k:05d}.bin").stat().st_size == 2 * reader.num_tokens(k)

    meta = json.loads((out / "meta.json").read_text())
    assert meta == {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dtype": "uint16",
        "vocab_size": VOCAB,
        "tokenizer_kind": "sentencepiece",
        "tokenizer_sha256": tokenizer.fingerprint,
        "tokenizer_files": {"tokenizer/tokenizer.model": tokenizer.fingerprint},
        "num_shards": 3,
        "shards": [
            {"name": f"shard_{k:05d}", "documents": len(docs), "tokens": sum(len(d) for d in docs)}
            for k, docs in enumerate(shards)
        ],
        "source": "random docs",
    }
    assert reader.tokenizer_location == out / "tokenizer" and reader.tokenizer_kind == "sentencepiece"
    assert (out / "tokenizer" / "tokenizer.model").read_bytes() == tokenizer.model.read_bytes()
    assert reader.tokenizer_sha256 == tokenizer.fingerprint
    assert reader.describe_shard(2) == str(out / "shard_00002.bin")
    offsets = np.fromfile(out / "shard_00000.idx", dtype="<i8")
    assert offsets[0] == 0 and offsets[-1] == reader.num_tokens(0) and len(offsets) == 7


def test_uint32_for_large_vocab(tmp_path: Path, tokenizer: FileTokenizer) -> None:
    out = tmp_path / "big"
    with TokenShardWriter(out, FileTokenizer(tokenizer.model, 70_000)) as writer:
        writer.add_document([1, 69_999, 65_536])  # no begin_shard: shard 0 starts implicitly
    reader = TokenShards(out)
    assert reader.dtype == np.uint32 and json.loads((out / "meta.json").read_text())["dtype"] == "uint32"
    assert reader.document(0, 0).tolist() == [1, 69_999, 65_536]
    assert (out / "shard_00000.bin").stat().st_size == 12


def test_iter_shard_from_start(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, shards = corpus
    reader = TokenShards(out)
    tail = list(reader.iter_shard(0, start=3))
    assert len(tail) == 2 and all(np.array_equal(g, w) for g, w in zip(tail, shards[0][3:], strict=True))
    assert list(reader.iter_shard(1, start=4)) == []
    every_other = list(reader.iter_shard(0, start=1, stride=2))
    assert [d.tolist() for d in every_other] == [shards[0][1].tolist(), shards[0][3].tolist()]
    assert list(reader.iter_shard(1, start=6, stride=3)) == []  # a reader sharing a short shard
    with pytest.raises(IndexError, match="start document 5"):
        next(reader.iter_shard(1, start=5))
    with pytest.raises(IndexError, match="shard 2"):
        reader.document(2, 0)


def test_exception_leaves_nothing_behind(tmp_path: Path, tokenizer: FileTokenizer) -> None:
    parent = tmp_path / "outputs"
    with (
        pytest.raises(RuntimeError, match="boom"),
        TokenShardWriter(parent / "corpus", tokenizer) as w,
    ):
        w.add_document([1, 2, 3])
        w.begin_shard()
        w.add_document([4])
        raise RuntimeError("boom")
    assert list(parent.iterdir()) == []


def test_refuses_to_overwrite(corpus: tuple[Path, list[list[np.ndarray]]], tokenizer: FileTokenizer) -> None:
    out, _ = corpus
    with pytest.raises(FileExistsError, match=f"{out}.*overwrite=True"):
        TokenShardWriter(out, tokenizer)
    with TokenShardWriter(out, tokenizer, overwrite=True) as writer:
        writer.add_document([7, 8])
    reader = TokenShards(out)
    assert reader.num_shards == 1 and reader.document(0, 0).tolist() == [7, 8]
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_writes_into_existing_empty_dir(tmp_path: Path, tokenizer: FileTokenizer) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    with TokenShardWriter(out, tokenizer) as writer:
        writer.add_document([3])
    assert TokenShards(out).total_tokens == 1


def test_out_of_range_ids_rejected(tmp_path: Path, tokenizer: FileTokenizer) -> None:
    out = tmp_path / "corpus"
    too_big = r"token id 300 is outside the vocabulary \[0, 300\)"
    with pytest.raises(ValueError, match=too_big), TokenShardWriter(out, tokenizer) as writer:
        writer.add_document([1, 300])
    with (
        pytest.raises(ValueError, match="token id -1"),
        TokenShardWriter(out, tokenizer) as writer,
    ):
        writer.add_document(np.array([-1, 2]))
    with pytest.raises(ValueError, match="integers"), TokenShardWriter(out, tokenizer) as writer:
        writer.add_document([1.5])
    assert list(tmp_path.iterdir()) == [tmp_path / "tok"]


def test_check_tokenizer(corpus: tuple[Path, list[list[np.ndarray]]], tokenizer: FileTokenizer) -> None:
    out, _ = corpus
    reader = TokenShards(out)
    reader.check_tokenizer(tokenizer)
    other = tokenizer.model.with_name("other.model")
    other.write_bytes(b"a different tokenizer")
    with pytest.raises(ValueError) as err:
        reader.check_tokenizer(FileTokenizer(other))
    message = str(err.value)
    assert (
        f"token shards at {out} were written with the sentencepiece tokenizer {out / 'tokenizer'}" in message
    )
    assert f"(fingerprint {tokenizer.fingerprint})" in message
    assert f"this run's sentencepiece tokenizer {other} differs (fingerprint {sha256_file(other)})" in message
    with pytest.raises(ValueError, match="this run's hf tokenizer"):
        reader.check_tokenizer(FileTokenizer(tokenizer.model, kind="hf"))


def as_version_1(out: Path) -> None:
    """Rewrite a directory as version 1 wrote it: tokenizer.model at the top, no kind or file list."""
    (out / "tokenizer" / "tokenizer.model").rename(out / "tokenizer.model")
    (out / "tokenizer").rmdir()
    meta = json.loads((out / "meta.json").read_text())
    del meta["tokenizer_kind"], meta["tokenizer_files"]
    (out / "meta.json").write_text(json.dumps({**meta, "version": 1}))


def test_version_1_directories_still_read_as_sentencepiece(
    corpus: tuple[Path, list[list[np.ndarray]]], tokenizer: FileTokenizer
) -> None:
    out, shards = corpus
    as_version_1(out)
    reader = TokenShards(out)
    assert reader.tokenizer_kind == "sentencepiece"
    assert reader.tokenizer_location == out / "tokenizer.model"
    assert reader.tokenizer_files == {"tokenizer.model": tokenizer.fingerprint}
    assert np.array_equal(reader.document(1, 0), shards[1][0])
    reader.check_tokenizer(tokenizer)
    (out / "tokenizer.model").write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"tokenizer\.model has sha256 .* but .*meta\.json records"):
        TokenShards(out)


def test_missing_meta(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, _ = corpus
    (out / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        TokenShards(out)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("format", "something-else", "format 'something-else', expected 'pcpretrain-token-shards'"),
        ("version", 3, "version 3, expected one of 1, 2"),
        ("tokenizer_kind", None, "no tokenizer_kind string"),
        ("tokenizer_files", {"../evil": "0"}, "tokenizer file '../evil': '0', expected 'tokenizer/<file>'"),
        ("dtype", "uint32", "dtype 'uint32', expected 'uint16'"),
        ("num_shards", 3, "num_shards 3 but lists 2 shards"),
    ],
)
def test_bad_meta_fields(
    corpus: tuple[Path, list[list[np.ndarray]]], field: str, value: object, expected: str
) -> None:
    out, _ = corpus
    meta = json.loads((out / "meta.json").read_text())
    meta[field] = value
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="meta.json") as err:
        TokenShards(out)
    assert expected in str(err.value)


def test_unparseable_meta(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, _ = corpus
    (out / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is not valid JSON"):
        TokenShards(out)


def test_missing_bin(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, _ = corpus
    (out / "shard_00001.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard_00001\.bin is missing"):
        TokenShards(out)


def test_truncated_bin(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, shards = corpus
    tokens = sum(len(d) for d in shards[1])
    path = out / "shard_00001.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError) as err:
        TokenShards(out)
    assert f"shard_00001.bin holds {2 * tokens - 2} bytes but meta.json lists {tokens} tokens" in str(
        err.value
    )
    assert f"expected {2 * tokens} bytes" in str(err.value)


def test_idx_length_mismatch(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, _ = corpus
    path = out / "shard_00000.idx"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"shard_00000\.idx holds 5 offsets .*5 documents .*expected 6"):
        TokenShards(out)


def _rewrite_offsets(path: Path, edit) -> None:
    offsets = np.fromfile(path, dtype="<i8")
    edit(offsets)
    offsets.astype("<i8").tofile(path)


def test_idx_end_not_matching_bin(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, shards = corpus
    tokens = sum(len(d) for d in shards[1])
    _rewrite_offsets(out / "shard_00001.idx", lambda o: o.__setitem__(-1, tokens + 100))
    with pytest.raises(ValueError) as err:
        TokenShards(out)
    assert f"shard_00001.idx ends at {tokens + 100} tokens but shard_00001.bin holds {tokens} tokens" in str(
        err.value
    )


def test_idx_not_starting_at_zero(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, _ = corpus
    _rewrite_offsets(out / "shard_00000.idx", lambda o: o.__setitem__(0, 1))
    with pytest.raises(ValueError, match=r"shard_00000\.idx starts at offset 1, expected 0"):
        TokenShards(out)


def test_decreasing_offsets(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, _ = corpus

    def swap(offsets: np.ndarray) -> None:
        offsets[2], offsets[3] = offsets[3], offsets[2]

    _rewrite_offsets(out / "shard_00000.idx", swap)
    with pytest.raises(ValueError, match=r"shard_00000\.idx offsets decrease at document 2.*non-decreasing"):
        TokenShards(out)


def test_tokenizer_copy_checked(corpus: tuple[Path, list[list[np.ndarray]]]) -> None:
    out, _ = corpus
    copy = out / "tokenizer" / "tokenizer.model"
    copy.write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"tokenizer\.model has sha256 .* but .*meta\.json records"):
        TokenShards(out)
    copy.unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer/tokenizer\.model is missing"):
        TokenShards(out)


def test_version_1_directory_gives_back_its_sentencepiece_tokenizer(shared_dir: Path, tmp_path: Path) -> None:
    llama2 = load_tokenizer(shared_dir / "tokenizers" / "llama2" / "tokenizer.model")
    out = tmp_path / "corpus"
    with TokenShardWriter(out, llama2) as writer:
        writer.add_document(llama2.encode("Of Man's first disobedience"))
    as_version_1(out)
    loaded = TokenShards(out).load_tokenizer()
    assert (loaded.kind, loaded.fingerprint) == ("sentencepiece", llama2.fingerprint)
    assert TokenShards(out).document(0, 0).tolist() == loaded.encode("Of Man's first disobedience")
