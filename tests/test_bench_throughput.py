"""The throughput benchmark's CPU smoke run: every variant trains and is reported against the baseline."""

from __future__ import annotations

import gc
import importlib.util
import sys
import weakref

import pytest
from helpers import REPO_ROOT, run_script

from pcpretrain.train.run import build_training_parts

pytestmark = pytest.mark.slow


def test_bench_throughput_tiny_reports_every_variant_against_the_baseline() -> None:
    variants = ["baseline", "pc4", "pc4-forward", "pc4-bf16", "muon-gram-compiled", "muon-pc2"]
    result = run_script("bench_throughput.py", "--tiny", "--variants", *variants)
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1 :]}
    assert list(rows) == variants
    assert rows["baseline"][-1] == "1.000"
    assert all(float(row[1].replace(",", "")) > 0 for row in rows.values())


def test_bench_throughput_rejects_an_unknown_variant() -> None:
    result = run_script("bench_throughput.py", "--tiny", "--variants", "pc9", check=False, timeout=120)
    assert result.returncode == 2 and "unknown variants ['pc9']" in result.stderr


def test_a_variant_leaves_its_model_to_be_freed_before_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variants run one after another in one process: one that kept its model alive would add its
    memory to every later variant's peak."""
    spec = importlib.util.spec_from_file_location(
        "bench_throughput", REPO_ROOT / "scripts" / "bench_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_throughput", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
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
