"""The data-throughput benchmark runs end to end in its smoke mode (as CI runs it)."""

from __future__ import annotations

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow


def test_bench_data_tiny_prints_both_sources() -> None:
    result = run_script("bench_data.py", "--tiny", timeout=300)
    assert "text (tokenized in workers)" in result.stdout
    assert "token shards (memory-mapped)" in result.stdout
    assert "tokens/s" in result.stdout
