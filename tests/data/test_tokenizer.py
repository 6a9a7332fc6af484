"""SentencePiece tokenizers: loading, deterministic training, caching, fingerprints, Hugging Face export."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from pcpretrain.data import tokenizer as tokenizer_module
from pcpretrain.data.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    load_or_train,
    load_tokenizer,
    train_sentencepiece,
)
from pcpretrain.files import sha256_file

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
MILTON = SHARED / "data" / "milton"
LLAMA2_MODEL = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
VOCAB = 512


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path.resolve()} (expected beside the repository)")
    return path


@pytest.fixture(scope="module")
def milton_docs() -> list[str]:
    """A small slice of real text: the first 20 documents of one training shard."""
    shard = _require(MILTON) / "train-00000-of-00004.jsonl"
    lines = shard.read_text(encoding="utf-8").splitlines()[:20]
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def milton_paragraphs() -> list[str]:
    """Held-out paragraphs: verse with line breaks, indented lines, double spaces and line numbers.

    Stripped, because a text that starts with a space is where Hugging Face's Llama tokenizer
    knowingly differs from SentencePiece (see `Tokenizer.save_pretrained`).
    """
    lines = (_require(MILTON) / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    return [p.strip() for text in texts for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def trained(milton_docs: list[str], tmp_path_factory: pytest.TempPathFactory) -> SentencePieceTokenizer:
    return train_sentencepiece(milton_docs, VOCAB, tmp_path_factory.mktemp("spm") / "tok.model")


@pytest.fixture(scope="module")
def llama2() -> SentencePieceTokenizer:
    tokenizer = load_tokenizer(_require(LLAMA2_MODEL))
    assert isinstance(tokenizer, SentencePieceTokenizer)
    return tokenizer


def test_llama2_reference_ids(llama2: Tokenizer) -> None:
    assert llama2.encode_batch(["Hello world"]) == [[15043, 3186]]
    assert (llama2.vocab_size, llama2.bos_id, llama2.eos_id) == (32000, 1, 2)
    assert llama2.decode([15043, 3186]) == "Hello world"


def test_the_fingerprint_is_the_model_file_sha256_and_the_llama2_directory_stays_sentencepiece(
    llama2: SentencePieceTokenizer, tmp_path: Path
) -> None:
    assert (llama2.kind, llama2.location) == ("sentencepiece", LLAMA2_MODEL)
    assert llama2.fingerprint == sha256_file(LLAMA2_MODEL)  # as token shards and checkpoints recorded it
    from_dir = load_tokenizer(LLAMA2_MODEL.parent)  # a directory with tokenizer.model is SentencePiece
    assert (from_dir.kind, from_dir.fingerprint) == ("sentencepiece", llama2.fingerprint)
    assert llama2.save_files(tmp_path) == [tmp_path / "tokenizer.model"]
    assert load_tokenizer(tmp_path).fingerprint == llama2.fingerprint
    assert pickle.loads(pickle.dumps(llama2)).encode("Hello world") == [15043, 3186]
    assert len(pickle.dumps(llama2)) < 1000  # its path, not the model
    assert [llama2.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "\u2581Hello", "no such piece")] == [
        0,
        1,
        2,
        15043,
        None,
    ]


def test_training_is_deterministic(trained: Tokenizer, milton_docs: list[str], tmp_path: Path) -> None:
    again = train_sentencepiece(milton_docs, VOCAB, tmp_path / "again.model")
    assert again.location.read_bytes() == trained.location.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.model"], "no temp files left behind"


def test_trained_tokenizer_is_llama_style(trained: Tokenizer, milton_paragraphs: list[str]) -> None:
    assert (trained.vocab_size, trained.bos_id, trained.eos_id) == (VOCAB, 1, 2)
    ids = trained.encode_batch(milton_paragraphs)
    assert all(1 not in doc and 2 not in doc for doc in ids), "no BOS/EOS added by encode"
    assert [trained.decode(doc) for doc in ids] == milton_paragraphs, "lossless (byte fallback, identity)"
    pieces = trained.processor.encode("In 1667", out_type=str)
    assert pieces[-4:] == ["1", "6", "6", "7"], "digits are split"


def test_load_or_train_hits_cache(milton_docs: list[str], tmp_path: Path, monkeypatch) -> None:
    calls = []
    real_train = tokenizer_module.train_sentencepiece

    def counting_train(*args, **kwargs):
        calls.append(args[1])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tokenizer_module, "train_sentencepiece", counting_train)
    first = load_or_train(lambda: milton_docs, VOCAB, tmp_path)
    mtime = first.location.stat().st_mtime_ns
    second = load_or_train(lambda: list(milton_docs), VOCAB, tmp_path)
    assert calls == [VOCAB]
    assert second.location == first.location and second.location.stat().st_mtime_ns == mtime
    load_or_train(lambda: milton_docs, 384, tmp_path)
    load_or_train(lambda: milton_docs[:-1], VOCAB, tmp_path)
    assert calls == [VOCAB, 384, VOCAB], "vocab size and corpus are part of the cache key"


def test_load_errors_are_clear(tmp_path: Path) -> None:
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        load_tokenizer(missing)
    garbage = tmp_path / "garbage.model"
    garbage.write_text("this is not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_tokenizer(garbage)


def test_too_small_vocab_is_reported(milton_docs: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size=200"):
        train_sentencepiece(milton_docs, 200, tmp_path / "small.model")


@pytest.mark.parametrize("which", ["trained", "llama2"])
def test_save_pretrained_matches_sentencepiece(
    which: str, request: pytest.FixtureRequest, milton_paragraphs: list[str], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer, LlamaTokenizer

    tok: Tokenizer = request.getfixturevalue(which)
    written = {p.name for p in tok.save_pretrained(tmp_path)}
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= written
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(hf, LlamaTokenizer)
    assert len(hf) == tok.vocab_size
    assert any("  " in p for p in milton_paragraphs) and any("\n " in p for p in milton_paragraphs)
    texts = [*milton_paragraphs, "Hello world", "Numbers 1667 and  two  spaces\tand a tab, caf\u00e9 \u2603."]
    for text, ids in zip(texts, tok.encode_batch(texts), strict=True):
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf(text)["input_ids"] == [tok.bos_id, *ids]
        assert hf.decode(ids) == tok.decode(ids)
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)


def test_a_hugging_face_tokenizer_directory_loads_through_its_sentencepiece_model(tmp_path: Path) -> None:
    model = tmp_path / "src.model"
    tokenizer = train_sentencepiece(
        ["alpha beta gamma delta " * 20, "epsilon zeta eta theta " * 20] * 30, 300, model
    )
    hf_dir = tmp_path / "hf"
    tokenizer.save_pretrained(hf_dir)
    loaded = load_tokenizer(hf_dir)
    assert loaded.encode("alpha beta") == tokenizer.encode("alpha beta")
    assert loaded.kind == "sentencepiece" and loaded.fingerprint == tokenizer.fingerprint
    (hf_dir / "tokenizer.model").unlink()
    as_hf = load_tokenizer(hf_dir)
    assert as_hf.kind == "hf" and as_hf.encode("alpha beta") == tokenizer.encode("alpha beta")


def test_one_thread_encoding_gives_the_same_ids_and_survives_pickling(llama2: Tokenizer) -> None:
    texts = ["Of Man's first disobedience, and the fruit", "Sing, Heavenly Muse, 42 times."] * 8
    expected = llama2.encode_batch(texts)
    worker_copy = pickle.loads(pickle.dumps(llama2))
    worker_copy.use_one_thread()
    assert worker_copy.encode_batch(texts) == expected
    assert pickle.loads(pickle.dumps(worker_copy)).encode_batch(texts) == expected
