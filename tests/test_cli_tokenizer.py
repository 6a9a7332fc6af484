"""`pcpretrain tokenizer train --kind bpe` end to end: the byte-level BPE trains a run, and its merged
and exported checkpoints carry it so transformers encodes text to the ids the run trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, run_cli

pytestmark = pytest.mark.slow


def test_a_byte_level_bpe_tokenizer_trains_a_run_and_travels_with_its_checkpoints(
    milton: Path, tmp_path: Path
) -> None:
    """`tokenizer train --kind bpe` -> a run with data.tokenizer.path=<dir> -> merged and exported
    directories whose AutoTokenizer encodes text to the ids the run trained on."""
    from transformers import AutoTokenizer

    from pcpretrain.data.tokenizer import load_tokenizer

    tok_dir = tmp_path / "bpe"
    trained = run_cli(
        "tokenizer", "train", "--kind", "bpe", "--out", str(tok_dir), "--vocab-size", "1000",
        str(milton / "train-00000-of-00004.jsonl"),
    )  # fmt: skip
    assert f"bpe tokenizer with 1000 pieces written to {tok_dir}" in trained.stdout
    tokenizer = load_tokenizer(tok_dir)
    assert (tokenizer.kind, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == ("hf", 1000, 0, 1)
    run_cli(
        "train",
        *TINY_OVERRIDES,
        "data=files",
        f"data.train_files=[{milton}/train-00000-of-00004.jsonl]",
        f"data.validation_files=[{milton}/validation.jsonl]",
        f"data.tokenizer.path={tok_dir}",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
        "data.seq_len=64",
        "trainer.max_steps=2",
        "checkpoint.every=2",
        f"run.dir={tmp_path / 'run'}",
    )
    checkpoints = tmp_path / "run" / "checkpoints"
    unmerged, merged = checkpoints / "step_00000002", checkpoints / "step_00000002-merged"
    assert (unmerged / "tokenizer.json").is_file() and not (unmerged / "tokenizer.model").exists()
    assert load_tokenizer(unmerged).fingerprint == tokenizer.fingerprint
    run_cli("export", str(unmerged), str(tmp_path / "exported"))
    text = "Of Man's first disobedience, and the fruit\nOf that forbidden tree, 1667."
    for directory in (merged, tmp_path / "exported"):
        assert AutoTokenizer.from_pretrained(directory).encode(
            text, add_special_tokens=False
        ) == tokenizer.encode(text)
        config = json.loads((directory / "config.json").read_text())
        assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (1024, 0, 1)


def test_a_hub_tokenizer_that_cannot_be_fetched_is_bad_input_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = run_cli(
        "train", *TINY_OVERRIDES, "data.tokenizer.path=no-such-org/no-such-tokenizer",
        "data.tokenizer.vocab_size=null", f"run.dir={tmp_path / 'run'}", expect_ok=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "data.tokenizer.path='no-such-org/no-such-tokenizer': could not fetch" in result.stderr
    assert "hf download no-such-org/no-such-tokenizer" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
