"""The PC-phase benchmark runs end to end on a tiny model and accounts for every phase's FLOPs."""

from __future__ import annotations

import re

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow


def test_bench_pc_step_tiny_prints_every_phase_with_its_flops() -> None:
    result = run_script("bench_pc_step.py", "--model", "tiny", "--steps", "1", "--warmup", "0", timeout=300)
    for phase in ("begin", "finish", "spectral", "total"):
        row = re.search(rf"^{phase}\s+([\d.]+)\s+([\d.]+)", result.stdout, re.MULTILINE)
        assert row, result.stdout
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0
