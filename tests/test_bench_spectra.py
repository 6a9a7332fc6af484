"""The spectral-monitor benchmark's CPU smoke run: one analysis of the tiny model, timed and reported."""

from __future__ import annotations

from helpers import run_script


def test_bench_spectra_tiny_times_an_analysis_of_every_hidden_matrix() -> None:
    result = run_script(
        "bench_spectra.py", "--model", "tiny", "--device", "cpu", "--every", "10", timeout=300
    )
    rows = {line[:22].strip(): line[22:].split() for line in result.stdout.splitlines()}
    assert rows["matrices"][:4] == ["14", "in", "4", "same-shape"]  # 2 layers x 7; q/k/v, o, gate/up, down
    assert float(rows["seconds per analysis"][0]) > 0
    assert 0 < float(rows["share of training"][0].rstrip("%")) < 100
    assert "every=10," in rows["share of training"]
