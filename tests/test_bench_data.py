"""The data-throughput benchmark runs end to end in its smoke mode (as CI runs it)."""

from __future__ import annotations

import subprocess

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny() -> subprocess.CompletedProcess:
    return run_script("bench_data.py", "--tiny", timeout=300)


def test_bench_data_tiny_prints_both_sources(tiny: subprocess.CompletedProcess) -> None:
    assert "text (tokenized in workers)" in tiny.stdout
    assert "token shards (memory-mapped)" in tiny.stdout
    assert "tokens/s" in tiny.stdout


def test_bench_data_tiny_pre_tokenizes_with_both_tokenizer_kinds(tiny: subprocess.CompletedProcess) -> None:
    table = tiny.stdout[tiny.stdout.index("pre-tokenizing") :].splitlines()
    assert "per CPU-s" in table[1]
    rows = [line.split() for line in table[2:] if line.strip()]
    assert [(row[0], row[-7]) for row in rows] == [("sentencepiece", "0"), ("hf", "0")]
    assert all(float(row[-1].replace(",", "")) > 0 for row in rows)  # tokens per CPU-second
