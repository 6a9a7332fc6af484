"""The optimizer benchmark runs end to end on a tiny model (its figures need a GPU to mean much)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_bench_optimizer_tiny_prints_both_optimizers() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "bench_optimizer.py"),
            "--model",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "adamw" in result.stdout and "muon" in result.stdout and "vs AdamW" in result.stdout
