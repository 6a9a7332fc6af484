"""The PC numerics report: float32 is float32-accurate, and the TF32 figures really are TF32's."""

from __future__ import annotations

import pytest
import torch
from helpers import load_script, run_script


def test_round_to_tf32_keeps_ten_mantissa_bits_rounding_to_nearest(monkeypatch: pytest.MonkeyPatch) -> None:
    round_to_tf32 = load_script("pc_numerics", monkeypatch).round_to_tf32
    x = torch.tensor([1.0, 1 + 2**-10, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, -3.0])
    expected = torch.tensor([1.0, 1 + 2**-10, 1.0, 1 + 2**-9, 1.0, -3.0])  # ties go to even
    assert torch.equal(round_to_tf32(x), expected)


def test_report_on_tiny_shapes() -> None:
    lines = run_script("pc_numerics.py", "--tiny", "--degrees", "4").stdout.splitlines()
    rows = [line.rsplit(maxsplit=2) for line in lines[2:]]
    errors = {(row[0].split()[0], row[0].split(maxsplit=2)[2]): float(row[1]) for row in rows}
    for shape in ("160x64", "64x160", "64x64"):
        assert errors[shape, "fp32"] < 2e-6
        assert 1e-4 < errors[shape, "tf32 (emulated)"] < 5e-3
        assert 1e-3 < errors[shape, "bf16 cast of W_eff"] < 3e-3
