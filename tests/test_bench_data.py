"""The data-throughput benchmark runs end to end in its smoke mode (as CI runs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_bench_data_tiny_prints_both_sources() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_data.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "text (tokenized in workers)" in result.stdout
    assert "token shards (memory-mapped)" in result.stdout
    assert "tokens/s" in result.stdout
