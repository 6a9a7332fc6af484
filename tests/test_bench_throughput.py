"""The throughput benchmark's CPU smoke run: every variant trains and is reported against the baseline."""

from __future__ import annotations

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow


def test_bench_throughput_tiny_reports_every_variant_against_the_baseline() -> None:
    result = run_script("bench_throughput.py", "--tiny")
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :]}
    assert list(rows) == ["baseline", "pc4", "pc4-forward", "muon-pc2"]
    assert rows["baseline"][-1] == "1.000"
    assert all(float(row[1].replace(",", "")) > 0 for row in rows.values())


def test_bench_throughput_rejects_an_unknown_variant() -> None:
    result = run_script("bench_throughput.py", "--tiny", "--variants", "pc9", check=False, timeout=120)
    assert result.returncode == 2 and "unknown variants ['pc9']" in result.stderr
