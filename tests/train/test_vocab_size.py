"""The embedding size follows the tokenizer: rounded up to a multiple of 64 unless the config sets it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import compose_config

from pcpretrain.config import ConfigError
from pcpretrain.train.run import resolve_vocab_size


def prepared(vocab_size: int) -> SimpleNamespace:
    """The one field of PreparedData that sizing reads."""
    return SimpleNamespace(tokenizer=SimpleNamespace(vocab_size=vocab_size, location=Path("tok")))


@pytest.mark.parametrize(
    ("tokenizer", "model"), [(1, 64), (64, 64), (65, 128), (32000, 32000), (128256, 128256)]
)
def test_null_rounds_the_tokenizer_size_up_to_a_multiple_of_64(tokenizer: int, model: int) -> None:
    assert resolve_vocab_size(compose_config(), prepared(tokenizer)) == model


def test_an_explicit_size_is_kept_and_must_hold_every_id() -> None:
    assert resolve_vocab_size(compose_config("model.vocab_size=50"), prepared(50)) == 50
    with pytest.raises(
        ConfigError, match=r"model.vocab_size=50 is smaller than the tokenizer's vocabulary \(51"
    ):
        resolve_vocab_size(compose_config("model.vocab_size=50"), prepared(51))
