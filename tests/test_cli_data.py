"""Data paths through the CLI: tokenizer training, token shards, multi-shard corpora with workers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_OVERRIDES, assert_resume_is_exact, read_metrics, run_cli
from pretokenize_faults import FaultyShards

from pcpretrain.data.pipeline import PretokenizedEncoder, TextEncoder
from pcpretrain.data.pretokenize import tokenize_to_shards
from pcpretrain.data.sources import TextSource
from pcpretrain.data.stream import LogicalStream, StreamSpec
from pcpretrain.data.token_shards import TokenShards
from pcpretrain.data.tokenizer import load_tokenizer, train_bpe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(milton: Path, llama2_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokens") / "train"
    files = str(milton / "train-*.jsonl")
    result = run_cli("tokenize", files, "--tokenizer", str(llama2_model), "--out", str(out), "--workers", "2")
    assert "4 shards" in result.stdout
    assert "shard 4/4 done" in result.stderr and "4 of 4 shards done" in result.stderr
    return out


def test_tokenize_continues_an_interrupted_run_and_refuses_other_settings(
    milton: Path, llama2_model: Path, tmp_path: Path
) -> None:
    files = str(milton / "train-*.jsonl")
    source = TextSource.from_files([files])
    bpe = train_bpe(source.first_documents(200), 1000, tmp_path / "bpe")
    out = tmp_path / "tokens"
    described = f"{[files]}, text field 'text'"  # as the CLI describes the source
    with pytest.raises(RuntimeError, match="injected failure"):
        tokenize_to_shards(FaultyShards(source, 2, "raise"), bpe, out, description=described, workers=0)

    refused = run_cli("tokenize", files, "--tokenizer", str(llama2_model), "--out", str(out), expect_ok=False)
    assert refused.returncode == 1
    assert f"{out}.partial holds an unfinished tokenize run with other settings" in refused.stderr
    assert "tokenizer_kind was 'hf', now 'sentencepiece'" in refused.stderr

    result = run_cli(
        "tokenize", files, "--tokenizer", str(tmp_path / "bpe"), "--out", str(out), "--workers", "2"
    )
    assert "2 of 4 shards already done" in result.stderr and "4 of 4 shards done" in result.stderr
    shards = TokenShards(out)
    assert (shards.tokenizer_kind, shards.tokenizer_sha256) == ("hf", bpe.fingerprint)
    texts = [text for text in source.iter_shard(3) if text]
    assert [doc.tolist() for doc in shards.iter_shard(3)] == bpe.encode_batch(texts)


def files_overrides(milton: Path, llama2_model: Path) -> list[str]:
    return [
        "data=files",
        f"data.train_files=[{milton}/train-*.jsonl]",
        f"data.validation_files=[{milton}/validation.jsonl]",
        f"data.tokenizer.path={llama2_model}",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
        "model.vocab_size=32000",
        "data.seq_len=64",
    ]


def test_token_shards_hold_the_same_tokens_as_on_the_fly_tokenization(
    milton: Path, llama2_model: Path, shards: Path
) -> None:
    text = TextSource.from_files([str(milton / "train-*.jsonl")])
    tokens = TokenShards(shards)
    tokenizer = load_tokenizer(llama2_model)
    spec = StreamSpec(
        seq_len=128,
        seed=0,
        shuffle=False,
        shuffle_buffer=64,
        num_streams=1,
        num_shards=4,
        bos_id=1,
        eos_id=2,
        vocab_size=32000,
    )
    from_text = LogicalStream(text, TextEncoder(llama2_model), spec, 0).windows()
    from_shards = LogicalStream(tokens, PretokenizedEncoder(), spec, 0).windows()
    for a, b in itertools.islice(zip(from_text, from_shards, strict=True), 300):
        assert np.array_equal(a, b)
    assert tokens.tokenizer_sha256 and tokens.vocab_size == tokenizer.vocab_size


def test_multi_shard_corpus_with_workers_resumes_exactly(
    milton: Path, llama2_model: Path, tmp_path: Path
) -> None:
    common = [
        *TINY_OVERRIDES,
        *files_overrides(milton, llama2_model),
        "data.num_workers=2",
        "trainer.max_steps=6",
        "checkpoint.every=3",
    ]
    assert len(assert_resume_is_exact(common, 3, tmp_path)) == 6


def test_training_from_token_shards(shards: Path, milton: Path, llama2_model: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    run_cli("tokenize", str(milton / "validation.jsonl"), "--tokenizer", str(llama2_model), "--out", str(val))
    run_cli(
        "train",
        *TINY_OVERRIDES,
        "data=shards",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
        f"data.shards_dir={shards}",
        f"data.validation_shards_dir={val}",
        "model.vocab_size=32000",
        "data.seq_len=64",
        "trainer.max_steps=3",
        f"run.dir={tmp_path / 'run'}",
    )
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]


@pytest.fixture(scope="module")
def small_tokenizer(milton: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok.model"
    # The order the usage text shows: options first, then the files.
    result = run_cli(
        "tokenizer",
        "train",
        "--out",
        str(out),
        "--vocab-size",
        "600",
        str(milton / "train-00000-of-00004.jsonl"),
    )
    assert "600 pieces" in result.stdout
    return out


def test_tokenizer_train_command_writes_a_llama_style_model(small_tokenizer: Path) -> None:
    tokenizer = load_tokenizer(small_tokenizer)
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (600, 1, 2)
    digits = [p for p in tokenizer.processor.encode("1984", out_type=str) if p.strip("\u2581")]
    assert [p.strip("\u2581") for p in digits] == ["1", "9", "8", "4"]  # digits are split


def test_token_shards_with_another_tokenizer_are_refused_before_training(
    shards: Path, small_tokenizer: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "train",
        *TINY_OVERRIDES,
        "data=shards",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
        f"data.shards_dir={shards}",
        "data.validation_documents=5",
        f"data.tokenizer.path={small_tokenizer}",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
        f"run.dir={tmp_path / 'run'}",
        expect_ok=False,
    )
    assert result.returncode == 1 and "differs" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_path_is_named(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        *TINY_OVERRIDES,
        "data=files",
        f"data.train_files=[{tmp_path}/nothing-*.jsonl]",
        "data.validation_documents=5",
        f"run.dir={tmp_path / 'run'}",
        expect_ok=False,
    )
    assert result.returncode == 2 and "nothing-*.jsonl" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written: no run directory


def test_weighted_mixture_of_files_and_token_shards_trains_and_resumes(
    milton: Path, llama2_model: Path, shards: Path, tmp_path: Path
) -> None:
    mixture = (
        f"data.mixture=[{{source:files,weight:2,train_files:['{milton}/train-0000[01]-of-00004.jsonl']}},"
        f"{{source:shards,weight:1,shards_dir:'{shards}'}}]"
    )
    common = [
        *TINY_OVERRIDES,
        "data.source=mixture",
        mixture,
        f"data.validation_files=[{milton}/validation.jsonl]",
        f"data.tokenizer.path={llama2_model}",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
        "model.vocab_size=32000",
        "data.seq_len=64",
        "trainer.max_steps=4",
        "checkpoint.every=2",
    ]
    assert len(assert_resume_is_exact(common, 2, tmp_path)) == 4
