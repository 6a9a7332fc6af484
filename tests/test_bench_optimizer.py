"""The optimizer benchmark runs end to end on a tiny model (its figures need a GPU to mean much)."""

from __future__ import annotations

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow


def test_bench_optimizer_tiny_prints_every_row() -> None:
    result = run_script("bench_optimizer.py", "--model", "tiny", "--steps", "1", "--warmup", "0", timeout=300)
    rows = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert rows == ["adamw", "muon", "muon-gram", "muon-compiled", "muon-gram-compiled"]
    assert "vs AdamW" in result.stdout
