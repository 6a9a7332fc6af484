"""The optimizer benchmark runs end to end on a tiny model (its figures need a GPU to mean much)."""

from __future__ import annotations

import sys

import pytest
from helpers import load_script, run_script

pytestmark = pytest.mark.slow


def test_bench_optimizer_tiny_prints_every_row() -> None:
    result = run_script("bench_optimizer.py", "--model", "tiny", "--steps", "1", "--warmup", "0", timeout=300)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert list(rows) == ["adamw", "muon", "muon-gram", "muon-compiled", "muon-gram-compiled"]
    assert result.stdout.splitlines()[1].split() == [
        "optimizer",
        "step",
        "ms",
        "vs",
        "AdamW",
        "GFLOP",
        "other",
        "GB",
    ]
    assert all(float(columns[0]) > 0 for columns in rows.values())
    # Counted for the eager Muon rows; a compiled row does its eager twin's products.
    assert rows["adamw"][2:] == ["-", "-"]
    assert float(rows["muon-gram"][2]) <= float(rows["muon"][2]) == float(rows["muon-compiled"][2])
    assert float(rows["muon"][3]) > 0 and rows["muon-compiled"][3] == "-"


def test_bench_optimizer_times_muons_elementwise_work_alone() -> None:
    """Newton–Schulz skipped: no product left, and the eager rows' bytes are the elementwise passes."""
    args = ("--model", "tiny", "--steps", "1", "--warmup", "1", "--elementwise-only")
    result = run_script("bench_optimizer.py", *args, timeout=300)
    assert "Newton-Schulz skipped (elementwise work alone)" in result.stdout.splitlines()[0]
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert all(float(columns[0]) > 0 for columns in rows.values())
    assert rows["muon"][2] == rows["muon-compiled"][2] == "0.0" and float(rows["muon"][3]) > 0


@pytest.mark.parametrize("strips", [1, 4])
def test_bench_optimizer_counts_the_1b_floors_without_timing(strips: int) -> None:
    result = run_script("bench_optimizer.py", "--count-only", "--symmetric-strips", str(strips), timeout=300)
    assert "symmetric products " + ("whole" if strips == 1 else "in up to 4 strips") in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert rows["muon"][:2] == ["-", "-"]
    # 18 layers of 4 square 2048 matrices and 3 of 2048 x 5632, 5 standard Newton-Schulz steps of
    # 2 m^2 n (X X^T) + 2 m^3 (its square) + 2 m^2 n (the update of X); the first two have a symmetric
    # result, of which 4 strips compute f = 5/8.
    f = 5 / 8 if strips == 4 else 1
    square, wide = 5 * 2 * 2048**3 * (2 * f + 1), 5 * (2 * 2048**2 * 5632 * (1 + f) + 2 * 2048**3 * f)
    assert float(rows["muon"][2]) == pytest.approx(18 * (4 * square + 3 * wide) / 1e9, abs=0.1)


def test_a_failing_row_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_script("bench_optimizer", monkeypatch)
    real_time_steps = bench.time_steps

    def time_or_fail(name, model, degree, steps, warmup, device, extra=(), elementwise_only=False):
        if "optimizer.compile=true" in extra:
            raise RuntimeError("compile failed\nin detail")
        return real_time_steps(name, model, degree, steps, warmup, device, extra, elementwise_only)

    monkeypatch.setattr(bench, "time_steps", time_or_fail)
    monkeypatch.setattr(
        sys, "argv", ["bench_optimizer.py", "--model", "tiny", "--steps", "1", "--warmup", "0"]
    )
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in out.splitlines()[2:]}
    assert rows["muon-compiled"] == rows["muon-gram-compiled"] == "failed: RuntimeError: compile failed"
    assert float(rows["muon"].split()[0]) > 0 and rows["adamw"].split()[1] == "1.00"
    assert "in detail" in err
