"""Resume checks (train/resume.py): tokenizers are compared by fingerprint, whichever kind the checkpoint
carries. Exact continuation and the other refusals run end to end in test_run.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_config

from pcpretrain.data.tokenizer import load_tokenizer
from pcpretrain.errors import IncompatibleResume
from pcpretrain.train.run import run_training


def test_a_run_resumed_with_another_tokenizer_kind_is_refused_naming_both(tmp_path: Path) -> None:
    run_training(tiny_config(tmp_path, "trainer.max_steps=2", "checkpoint.every=2"), tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step_00000002"
    saved = load_tokenizer(checkpoint)
    assert saved.kind == "sentencepiece" and saved.location == checkpoint / "tokenizer.model"
    bpe = tiny_config(tmp_path, "trainer.max_steps=4", "data.tokenizer.kind=bpe")
    with pytest.raises(
        IncompatibleResume, match=rf"tokenizer: .*byte-bpe-512-.*sha256 {saved.fingerprint[:12]}"
    ):
        run_training(bpe, tmp_path)
