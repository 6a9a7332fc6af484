"""``tokenize_to_shards``: the same bytes with any worker count, continuing after a kill or a failure,
refusing to continue with other settings, and shards of a Hugging Face tokenizer."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, wait_until
from pretokenize_faults import FaultyShards

from pcpretrain.data.pretokenize import tokenize_to_shards
from pcpretrain.data.sources import TextSource
from pcpretrain.data.token_shards import TokenShards
from pcpretrain.data.tokenize_partial import PartialRunMismatch
from pcpretrain.data.tokenizer import load_tokenizer, train_bpe

WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "milton"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Four jsonl files of a few dozen pseudo-sentences each (one shard per file), with empty rows."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("corpus")
    paths = []
    for k in range(4):
        rows = [
            {"text": "" if i % 9 == 4 else " ".join(rng.choice(WORDS, size=int(rng.integers(5, 80))))}
            for i in range(30)
        ]
        path = root / f"part-{k}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def source(corpus: list[str]) -> TextSource:
    return TextSource.from_files(corpus)


@pytest.fixture(scope="module")
def hf_dir(source: TextSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json trained here with the tokenizers library (no network)."""
    out = tmp_path_factory.mktemp("bpe")
    train_bpe(list(source.iter_shard(0)), 400, out)
    return out


@pytest.fixture(scope="module")
def spm_model(shared_dir: Path) -> Path:
    return shared_dir / "tokenizers" / "llama2" / "tokenizer.model"


def directory_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative name: equal dicts mean byte-identical directories."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def straight(source: TextSource, hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run in this process: the reference every other run must equal."""
    out = tmp_path_factory.mktemp("straight") / "tokens"
    tokenize_to_shards(source, load_tokenizer(hf_dir), out, description="corpus", workers=0)
    return out


def test_hf_shards_record_kind_and_fingerprint(straight: Path, source: TextSource, hf_dir: Path) -> None:
    tokenizer = load_tokenizer(hf_dir)
    shards = TokenShards(straight)
    assert (shards.tokenizer_kind, shards.tokenizer_sha256) == ("hf", tokenizer.fingerprint)
    copy = straight / "tokenizer" / "tokenizer.json"
    assert copy.read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    assert shards.load_tokenizer().fingerprint == tokenizer.fingerprint
    assert shards.num_shards == 4 and not straight.with_name("tokens.partial").exists()
    texts = [text for text in source.iter_shard(2) if text]
    assert [doc.tolist() for doc in shards.iter_shard(2)] == tokenizer.encode_batch(texts)
    assert json.loads((straight / "tokenize.json").read_text())["input_shards"] == [
        source.describe_shard(k) for k in range(4)
    ]


def test_output_has_the_umask_permissions_not_private_ones(straight: Path) -> None:
    """Shards on a shared filesystem must be readable by whoever the umask allows, as any file."""
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(straight.stat().st_mode) == 0o777 & ~umask
    for name in (
        "shard_00000.bin",
        "shard_00000.idx",
        "meta.json",
        "tokenize.json",
        "tokenizer/tokenizer.json",
    ):
        assert stat.S_IMODE((straight / name).stat().st_mode) == 0o666 & ~umask, name


def test_check_tokenizer_refuses_another_kind(straight: Path, spm_model: Path) -> None:
    with pytest.raises(ValueError, match="written with the hf tokenizer .* this run's sentencepiece"):
        TokenShards(straight).check_tokenizer(load_tokenizer(spm_model))


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_processes_write_the_same_bytes(
    workers: int, straight: Path, source: TextSource, hf_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tokens"
    tokenize_to_shards(source, load_tokenizer(hf_dir), out, description="corpus", workers=workers)
    assert directory_bytes(out) == directory_bytes(straight)


def test_sigkill_mid_run_then_rerun_completes_identically(
    straight: Path, corpus: list[str], source: TextSource, hf_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tokens"
    script = f"""
        from pcpretrain.data.pretokenize import tokenize_to_shards
        from pcpretrain.data.sources import TextSource
        from pcpretrain.data.tokenizer import load_tokenizer
        from pretokenize_faults import FaultyShards

        if __name__ == "__main__":
            stalled = FaultyShards(TextSource.from_files({corpus!r}), 1, "stall")
            tokenize_to_shards(stalled, load_tokenizer({str(hf_dir)!r}), {str(out)!r},
                               description="corpus", workers=2)
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests")}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, start_new_session=True, text=True
    )
    partial = tmp_path / "tokens.partial"
    try:
        wait_until(lambda: (partial / "shard_00000.idx").exists(), process, "shard 0 was finished", 120)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its workers, as a scheduler would
        process.wait()
    assert not out.exists() and not (partial / "meta.json").exists()
    assert not (partial / "shard_00001.idx").exists()

    tokenize_to_shards(source, load_tokenizer(hf_dir), out, description="corpus", workers=2)
    assert directory_bytes(out) == directory_bytes(straight)
    assert not partial.exists()


def test_failure_keeps_finished_shards_and_other_settings_are_refused(
    straight: Path,
    source: TextSource,
    hf_dir: Path,
    spm_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "tokens"
    hf = load_tokenizer(hf_dir)
    with pytest.raises(RuntimeError, match="injected failure in shard 2"):
        tokenize_to_shards(FaultyShards(source, 2, "raise"), hf, out, description="corpus", workers=0)
    partial = tmp_path / "tokens.partial"
    assert sorted(p.name for p in partial.glob("shard_*")) == [
        "shard_00000.bin",
        "shard_00000.idx",
        "shard_00001.bin",
        "shard_00001.idx",
    ]
    assert not list(partial.glob(".*"))  # the failed shard's temporary file is gone

    with pytest.raises(PartialRunMismatch) as refused:
        tokenize_to_shards(source, load_tokenizer(spm_model), out, description="corpus")
    message = str(refused.value)
    assert f"{partial} holds an unfinished tokenize run with other settings" in message
    assert "tokenizer_kind was 'hf', now 'sentencepiece'" in message and "--overwrite" in message
    with pytest.raises(PartialRunMismatch, match="source was 'corpus', now 'other text'"):
        tokenize_to_shards(source, hf, out, description="other text")

    with caplog.at_level(logging.INFO, logger="pcpretrain.data"):
        tokenize_to_shards(source, hf, out, description="corpus", workers=0)
    assert "2 of 4 shards already done" in caplog.text
    assert directory_bytes(out) == directory_bytes(straight)


def test_overwrite_discards_a_partial_run_with_other_settings(
    source: TextSource, hf_dir: Path, spm_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tokens"
    with pytest.raises(RuntimeError, match="injected failure"):
        tokenize_to_shards(FaultyShards(source, 1, "raise"), load_tokenizer(hf_dir), out, workers=0)
    spm = load_tokenizer(spm_model)
    shards = tokenize_to_shards(source, spm, out, overwrite=True, workers=0)
    assert (shards.tokenizer_kind, shards.tokenizer_sha256) == ("sentencepiece", spm.fingerprint)
    assert (out / "tokenizer" / "tokenizer.model").read_bytes() == spm_model.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        tokenize_to_shards(source, spm, out, workers=0)
