"""The optimizer benchmark runs end to end on a tiny model (its figures need a GPU to mean much)."""

from __future__ import annotations

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow


def test_bench_optimizer_tiny_prints_both_optimizers() -> None:
    result = run_script("bench_optimizer.py", "--model", "tiny", "--steps", "1", "--warmup", "0", timeout=300)
    assert "adamw" in result.stdout and "muon-gram" in result.stdout and "vs AdamW" in result.stdout
