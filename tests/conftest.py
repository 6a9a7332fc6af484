"""Shared fixtures: a hermetic cache, the shared test data, and a helper to run the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SHARED


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (corpus, tokenizers) per test session, never the user's home directory."""
    cache = tmp_path_factory.mktemp("pcpretrain-cache")
    os.environ["PCPRETRAIN_CACHE"] = str(cache)
    os.environ["WANDB_MODE"] = os.environ.get("WANDB_MODE", "disabled")
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared test data beside the repository; tests needing it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED} (clone the repository beside ../shared)")
    return SHARED


@pytest.fixture(scope="session")
def milton(shared_dir: Path) -> Path:
    """Real text: Paradise Lost in four jsonl training shards and a validation file."""
    return shared_dir / "data" / "milton"


@pytest.fixture(scope="session")
def llama2_model(shared_dir: Path) -> Path:
    """The Llama-2 SentencePiece model file."""
    return shared_dir / "tokenizers" / "llama2" / "tokenizer.model"
