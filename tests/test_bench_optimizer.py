"""The optimizer benchmark runs end to end on a tiny model (its figures need a GPU to mean much)."""

from __future__ import annotations

import sys

import pytest
from helpers import load_script, run_script

pytestmark = pytest.mark.slow


def test_bench_optimizer_tiny_prints_every_row() -> None:
    result = run_script("bench_optimizer.py", "--model", "tiny", "--steps", "1", "--warmup", "0", timeout=300)
    rows = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert rows == ["adamw", "muon", "muon-gram", "muon-compiled", "muon-gram-compiled"]
    assert "vs AdamW" in result.stdout


def test_a_failing_row_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_script("bench_optimizer", monkeypatch)
    real_time_steps = bench.time_steps

    def time_or_fail(name, model, degree, steps, warmup, device, extra=()):
        if "optimizer.compile=true" in extra:
            raise RuntimeError("compile failed\nin detail")
        return real_time_steps(name, model, degree, steps, warmup, device, extra)

    monkeypatch.setattr(bench, "time_steps", time_or_fail)
    monkeypatch.setattr(
        sys, "argv", ["bench_optimizer.py", "--model", "tiny", "--steps", "1", "--warmup", "0"]
    )
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in out.splitlines()[2:]}
    assert rows["muon-compiled"] == rows["muon-gram-compiled"] == "failed: RuntimeError"
    assert float(rows["muon"].split()[0]) > 0 and rows["adamw"].split()[1] == "1.00"
    assert "in detail" in err
