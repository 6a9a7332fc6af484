"""Hugging Face tokenizer.json tokenizers: byte-level BPE training, loading by path or Hub id, BOS/EOS
from their config (and overrides), fingerprints, pickling for loader workers, transformers export."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from pcpretrain.config import DataConfig
from pcpretrain.data import tokenizer as tokenizer_module
from pcpretrain.data.bpe_training import BOS_TOKEN, EOS_TOKEN
from pcpretrain.data.hf_tokenizer import HFTokenizer
from pcpretrain.data.pipeline import TextEncoder, special_ids
from pcpretrain.data.tokenizer import load_or_train, load_tokenizer, train_bpe
from pcpretrain.errors import ConfigError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
TEXTS = [
    "Hello world",
    " leading space, then  two spaces",
    "Numbers 1667 and 42;\ttabs, caf\u00e9, \u2603 and \u4e2d\u6587.",
    "line\n\nbreaks  \n indented",
]


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """A small deterministic corpus: word sequences with numbers and punctuation."""
    return [
        " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(40)) + f", number {i * 37}.\n"
        for i in range(60)
    ]


@pytest.fixture(scope="module")
def bpe_dir(documents: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "tok"
    train_bpe(documents, 320, out)
    return out


@pytest.fixture(scope="module")
def bpe(bpe_dir: Path) -> HFTokenizer:
    tokenizer = load_tokenizer(bpe_dir)
    assert isinstance(tokenizer, HFTokenizer)
    return tokenizer


def test_trained_byte_level_bpe_round_trips_any_text(bpe: HFTokenizer, bpe_dir: Path) -> None:
    assert bpe.kind == "hf" and bpe.location == bpe_dir
    assert (bpe.vocab_size, bpe.bos_id, bpe.eos_id) == (320, 0, 1)
    assert (bpe.token_to_id(BOS_TOKEN), bpe.token_to_id(EOS_TOKEN), bpe.token_to_id("<nope>")) == (0, 1, None)
    for text, ids in zip(TEXTS, bpe.encode_batch(TEXTS), strict=True):
        assert ids == bpe.encode(text) and bpe.decode(ids) == text
        assert 0 not in ids and 1 not in ids  # no BOS/EOS: packing adds them
    assert len(bpe.encode("alpha beta gamma")) < len("alpha beta gamma")  # merges were learned


def test_training_is_deterministic(documents: list[str], bpe_dir: Path, tmp_path: Path) -> None:
    again = train_bpe(documents, 320, tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (bpe_dir / "tokenizer.json").read_bytes()
    assert again.fingerprint == load_tokenizer(bpe_dir).fingerprint


def test_load_by_directory_or_tokenizer_json_file(bpe: HFTokenizer, bpe_dir: Path) -> None:
    by_file = load_tokenizer(bpe_dir / "tokenizer.json")
    assert by_file.location == bpe_dir / "tokenizer.json"
    assert (by_file.bos_id, by_file.eos_id, by_file.fingerprint) == (bpe.bos_id, bpe.eos_id, bpe.fingerprint)
    assert by_file.encode_batch(TEXTS) == bpe.encode_batch(TEXTS)
    assert load_tokenizer(str(bpe_dir)).fingerprint == bpe.fingerprint


def test_fingerprint_is_the_sha256_of_tokenizer_json_and_survives_save_files(
    bpe: HFTokenizer, bpe_dir: Path, tmp_path: Path
) -> None:
    import hashlib

    assert bpe.fingerprint == hashlib.sha256((bpe_dir / "tokenizer.json").read_bytes()).hexdigest()
    written = bpe.save_files(tmp_path / "copy")
    assert sorted(p.name for p in written) == ["tokenizer.json", "tokenizer_config.json"]
    copy = load_tokenizer(tmp_path / "copy")
    assert (copy.fingerprint, copy.bos_id, copy.eos_id) == (bpe.fingerprint, bpe.bos_id, bpe.eos_id)
    assert copy.encode_batch(TEXTS) == bpe.encode_batch(TEXTS)


def test_pickles_as_its_paths_and_reloads_in_the_worker(bpe: HFTokenizer, bpe_dir: Path) -> None:
    data = pickle.dumps(bpe)
    assert len(data) < 2000  # not the vocabulary
    assert pickle.loads(data).encode_batch(TEXTS) == bpe.encode_batch(TEXTS)
    encoder = pickle.loads(pickle.dumps(TextEncoder(bpe.location)))
    assert encoder(TEXTS) == bpe.encode_batch(TEXTS)


def test_a_handmade_tokenizer_without_bos_reads_eos_from_the_special_tokens_map(tmp_path: Path) -> None:
    """GPT-NeoX and Qwen name no BOS; a special_tokens_map.json may hold AddedToken dicts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.add_special_tokens(["<|endoftext|>"])
    backend.add_tokens([chr(c) for c in range(ord("a"), ord("z") + 1)])
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPTNeoXTokenizer"}))
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "<|endoftext|>", "lstrip": False}})
    )
    tokenizer = load_tokenizer(tmp_path)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size) == (None, 0, 27)
    assert sorted(p.name for p in tokenizer.save_files(tmp_path / "copy")) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_a_config_naming_a_token_outside_the_vocabulary_is_refused(bpe_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((bpe_dir / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": "<s>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json bos_token='<s>' is not in the vocabulary"):
        load_tokenizer(tmp_path)


def test_bos_eos_overrides_from_the_config(bpe: HFTokenizer) -> None:
    cfg = DataConfig()
    assert special_ids(cfg, bpe) == (0, 1)
    cfg.tokenizer.bos_token = EOS_TOKEN
    cfg.tokenizer.eos_token = BOS_TOKEN
    assert special_ids(cfg, bpe) == (1, 0)
    cfg.add_bos = False
    assert special_ids(cfg, bpe) == (None, 0)
    cfg.tokenizer.eos_token = "<|eot_id|>"
    with pytest.raises(ConfigError, match=r"data.tokenizer.eos_token='<\|eot_id\|>' is not in the vocab"):
        special_ids(cfg, bpe)


def test_save_pretrained_gives_transformers_the_same_ids(bpe: HFTokenizer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    bpe.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id) == (bpe.bos_id, bpe.eos_id)
    for text, ids in zip(TEXTS, bpe.encode_batch(TEXTS), strict=True):
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf(text)["input_ids"] == [bpe.bos_id, *ids]  # BOS, as Llama-3
        assert hf.decode(ids) == text
    assert load_tokenizer(tmp_path).fingerprint == bpe.fingerprint


def test_load_or_train_caches_each_kind_separately(documents: list[str], tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    real_bpe = tokenizer_module.train_bpe
    monkeypatch.setattr(tokenizer_module, "train_bpe", lambda *a: calls.append("bpe") or real_bpe(*a))
    first = load_or_train(lambda: documents, 300, tmp_path, kind="bpe")
    second = load_or_train(lambda: list(documents), 300, tmp_path, kind="bpe")
    assert calls == ["bpe"] and first.kind == second.kind == "hf"
    assert first.location == second.location and first.fingerprint == second.fingerprint
    sentencepiece = load_or_train(lambda: documents, 300, tmp_path, kind="sentencepiece")
    assert sentencepiece.kind == "sentencepiece" and calls == ["bpe"]
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        load_or_train(lambda: documents, 300, tmp_path, kind="wordpiece")


def test_too_small_a_byte_level_vocabulary_is_refused(documents: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size >= 258"):
        train_bpe(documents, 200, tmp_path / "small")


def test_unloadable_paths_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match="does not exist .*a SentencePiece .model file, a tokenizer.json"
    ):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="directory without tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path)


def test_a_hub_id_without_network_names_the_id_and_the_way_out(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        load_tokenizer("no-such-org/no-such-tokenizer")
    message = str(info.value)
    assert "'no-such-org/no-such-tokenizer'" in message
    assert "hf download no-such-org/no-such-tokenizer" in message and "local path" in message


def test_a_hub_id_loads_the_downloaded_snapshot(bpe_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    asked: list[tuple[str, list[str]]] = []

    def fake_download(repo_id: str, allow_patterns: list[str]) -> str:
        asked.append((repo_id, allow_patterns))
        return str(bpe_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)
    tokenizer = load_tokenizer("meta-llama/Meta-Llama-3-8B")
    assert tokenizer.location == bpe_dir and tokenizer.kind == "hf"
    assert asked == [("meta-llama/Meta-Llama-3-8B", tokenizer_module.HUB_TOKENIZER_FILES)]
    assert "model.safetensors" not in tokenizer_module.HUB_TOKENIZER_FILES


def test_one_thread_encoding_gives_the_same_ids(bpe: HFTokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)  # use_one_thread sets it for the process
    worker_copy = pickle.loads(pickle.dumps(bpe))
    worker_copy.use_one_thread()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert worker_copy.encode_batch(TEXTS * 8) == bpe.encode_batch(TEXTS * 8)
