"""Multi-process training through the CLI (2 gloo processes under torchrun) against one process.

One process with 2 loader workers reads exactly the documents that 2 processes with one reader each
read, and accumulates the same global batch; so losses must agree to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_OVERRIDES, read_metrics, run_cli
from safetensors import safe_open

pytestmark = pytest.mark.slow

STEPS = 4
COMMON = [*TINY_OVERRIDES, f"trainer.max_steps={STEPS}", "trainer.eval_every=2", "checkpoint.every=2"]
ADAMW = ["pc.degree=4"]
MUON = ["optimizer=muon", "pc.degree=2", "optimizer.ns_dtype=float32"]


def train(run_dir: Path, *overrides: str, nproc: int) -> list[dict]:
    workers = "data.num_workers=2" if nproc == 1 else "data.num_workers=0"
    run_cli("train", *COMMON, workers, *overrides, f"run.dir={run_dir}", nproc=nproc)
    return read_metrics(run_dir)


def assert_same_trajectory(single: list[dict], multi: list[dict]) -> None:
    assert [r["step"] for r in multi] == [r["step"] for r in single] == list(range(1, STEPS + 1))
    for one, two in zip(single, multi, strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-5)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
        assert ("val_loss" in two) == ("val_loss" in one) == (one["step"] % 2 == 0)
        if "val_loss" in one:
            assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)


def merged_tensors(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else None
    tensors = {}
    for name in files or ["model.safetensors"]:
        with safe_open(str(directory / name), framework="pt") as handle:
            names = handle.keys()  # a safetensors handle, not a dict
            tensors.update({key: handle.get_tensor(key) for key in names})
    return tensors


@pytest.fixture(scope="module")
def single_adamw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "adamw"
    train(run_dir, *ADAMW, nproc=1)
    return run_dir


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_two_processes_match_one_process_with_accumulation_adamw_pc(
    engine: str, single_adamw: Path, tmp_path: Path
) -> None:
    multi = train(tmp_path / engine, *ADAMW, f"distributed={engine}", nproc=2)
    assert_same_trajectory(read_metrics(single_adamw), multi)

    checkpoint = tmp_path / engine / "checkpoints" / f"step_{STEPS:08d}"
    run_cli("export", str(checkpoint), str(tmp_path / "exported"))
    exported = merged_tensors(tmp_path / "exported")
    during_training = merged_tensors(tmp_path / engine / "checkpoints" / f"step_{STEPS:08d}-merged")
    single = merged_tensors(single_adamw / "checkpoints" / f"step_{STEPS:08d}-merged")
    assert exported.keys() == during_training.keys() == single.keys()
    assert not any(".pc_" in name for name in exported)
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, during_training[name], rtol=0, atol=1e-6)
        # A few AdamW steps amplify reduction-order differences where the second moment is tiny.
        torch.testing.assert_close(tensor, single[name], rtol=1e-3, atol=1e-4)


def test_two_processes_match_one_process_with_accumulation_muon_pc(tmp_path: Path) -> None:
    single = train(tmp_path / "single", *MUON, nproc=1)
    multi = train(tmp_path / "ddp", *MUON, "distributed=ddp", nproc=2)
    assert_same_trajectory(single, multi)


def test_resume_with_another_process_count_is_refused_clearly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli("train", *COMMON, "data.num_workers=0", "trainer.stop_at=2", f"run.dir={run_dir}", nproc=2)
    result = run_cli("train", *COMMON, "data.num_workers=0", f"run.dir={run_dir}", expect_ok=False)
    assert result.returncode == 1
    assert "process" in result.stderr and "step_00000002" in result.stderr
    assert (run_dir / "checkpoints" / "step_00000002" / "manifest.json").is_file()


def test_single_engine_refuses_several_processes(tmp_path: Path) -> None:
    result = run_cli(
        "train", *COMMON, "distributed=single", f"run.dir={tmp_path / 'run'}", nproc=2, expect_ok=False
    )
    assert result.returncode != 0
    assert "distributed=single but the launcher started 2 processes" in result.stderr


def test_a_zero_engine_runs_in_a_plain_process_like_ddp(single_adamw: Path, tmp_path: Path) -> None:
    plain = train(tmp_path / "zero2", *ADAMW, "distributed=zero2", nproc=1)
    assert_same_trajectory(read_metrics(single_adamw), plain)
