"""The PC-phase benchmark runs end to end on a tiny model and accounts for every phase's FLOPs."""

from __future__ import annotations

import re

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow


def test_bench_pc_step_tiny_prints_every_phase_with_its_flops_and_other_traffic() -> None:
    result = run_script("bench_pc_step.py", "--model", "tiny", "--steps", "1", "--warmup", "0", timeout=300)
    gigabytes = {}
    for phase in ("begin", "finish", "spectral", "total"):
        numbers = r"\s+([\d.]+)" * 4
        row = re.search(rf"^{phase}{numbers}$", result.stdout, re.MULTILINE)
        assert row, result.stdout
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0
        gigabytes[phase] = float(row.group(4))
    # Each phase at least reads the stacked weights once outside its products (16 layers of the tiny model).
    assert all(value > 0 for value in gigabytes.values())
    assert gigabytes["total"] == pytest.approx(sum(v for k, v in gigabytes.items() if k != "total"), abs=2e-3)
