"""The throughput benchmark's CPU smoke run: every variant trains and is reported against the baseline."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import pytest
from helpers import load_script, run_script

from pcpretrain.train.run import build_training_parts

pytestmark = pytest.mark.slow


def test_bench_throughput_tiny_reports_every_variant_against_the_baseline(tmp_path: Path) -> None:
    """Also profiles each variant's last step: the phases' table says where PC's time goes. (On CPUs
    Muon compiles only when told to: ``muon-pc2-compiled``.)"""
    variants = ["baseline", "pc4", "pc4-forward", "pc4-bf16", "muon-pc2", "muon-pc2-compiled"]
    result = run_script("bench_throughput.py", "--tiny", "--variants", *variants, "--profile", str(tmp_path))
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :]}
    assert list(rows) == variants
    assert rows["baseline"][-1] == "1.000"
    assert all(float(row[1].replace(",", "")) > 0 for row in rows.values())
    for variant in variants:
        (table,) = (tmp_path / variant).glob("top_ops_rank0_steps*.txt")
        phases = table.read_text().split("\n\n")[0]
        assert "micro-batches" in phases and "optimizer" in phases
        assert ("pc spectral update" in phases) == (variant != "baseline")


def test_bench_throughput_rejects_an_unknown_variant() -> None:
    result = run_script("bench_throughput.py", "--tiny", "--variants", "pc9", check=False, timeout=120)
    assert result.returncode == 2 and "unknown variants ['pc9']" in result.stderr


def test_a_failing_variant_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One GPU session measures every variant in one go: a variant that runs out of memory must not
    lose the figures of the others."""
    bench = load_script("bench_throughput", monkeypatch)
    real_run_variant = bench.run_variant

    def run_or_fail(name, *args):
        if name == "pc4":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return real_run_variant(name, *args)

    monkeypatch.setattr(bench, "run_variant", run_or_fail)
    monkeypatch.setattr(
        sys, "argv", ["bench_throughput.py", "--tiny", "--variants", "pc4", "baseline", "muon"]
    )
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["pc4", "baseline", "muon"]
    assert "pc4                  failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in out
    assert "vs baseline" in out and out.splitlines()[3].split()[-1] == "1.000"
    assert "Traceback" in err and "more detail" in err
    finished_rows = [line for line in err.splitlines() if line.startswith(("baseline ", "muon "))]
    assert finished_rows == out.splitlines()[3:5]  # each row as soon as its variant finished


def test_a_variant_leaves_its_model_to_be_freed_before_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variants run one after another in one process: one that kept its model alive would add its
    memory to every later variant's peak."""
    bench = load_script("bench_throughput", monkeypatch)
    built = []

    def build_and_watch(*args, **kwargs):
        parts = build_training_parts(*args, **kwargs)
        built.append(weakref.ref(next(parts.model.parameters())))
        return parts

    monkeypatch.setattr(bench, "build_training_parts", build_and_watch)
    overrides = [
        *bench.TINY,
        "data.seq_len=16",
        "trainer.batch_size=4",
        "trainer.micro_batch_size=2",
        "pc.degree=4",
    ]
    result = bench.run_variant("pc4", bench.variant_config(overrides), 2, 1, 1)
    gc.collect()
    assert result.tokens_per_s > 0 and result.start_gib is None  # memory is only measured on CUDA
    assert len(built) == 1 and built[0]() is None
