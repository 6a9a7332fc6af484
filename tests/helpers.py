"""Helpers shared by tests: where the shared data is, tiny CLI overrides, running the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open

from pcpretrain.spectra.analysis import SpectraReport
from pcpretrain.transpose_kernels import triton_available

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

needs_triton = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")

# Small enough that a CLI run takes seconds on a 2-core CPU.
TINY_OVERRIDES = [
    "model=tiny",
    "data.seq_len=64",
    "data.tokenizer.vocab_size=512",
    "trainer.batch_size=8",
    "trainer.micro_batch_size=4",
    "trainer.eval_every=0",
    "trainer.eval_batches=2",
    "scheduler.warmup_steps=2",
    "optimizer.lr=3e-3",
    "logger.progress=false",
]


def cli_command(*args: str, nproc: int = 1, launcher: bool = False) -> list[str]:
    """``pcpretrain <args>`` as one process, or as ``nproc`` processes under ``torchrun --standalone``
    (also for one process with ``launcher``: sharded engines need a process group)."""
    if nproc == 1 and not launcher:
        return [sys.executable, "-m", "pcpretrain", *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*torchrun, "-m", "pcpretrain", *args]


def cli_env(nproc: int = 1) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if nproc > 1:
        env["OMP_NUM_THREADS"] = "1"  # the processes share a 2-core machine
    return env


def run_cli(
    *args: str, expect_ok: bool = True, timeout: int = 600, nproc: int = 1, launcher: bool = False
) -> subprocess.CompletedProcess:
    """Run ``pcpretrain`` in a subprocess exactly as a user would (``nproc`` > 1: under torchrun)."""
    result = subprocess.run(
        cli_command(*args, nproc=nproc, launcher=launcher),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(nproc),
    )
    if expect_ok and result.returncode != 0:
        raise AssertionError(
            f"pcpretrain {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def run_script(name: str, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``scripts/<name>`` with this interpreter, output captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def load_script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``scripts/<name>.py`` as a module (registered for the test only: dataclasses look their module
    up), so that a test can call its functions or replace its parts."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def start_cli(*args: str, nproc: int = 1) -> subprocess.Popen:
    """Start ``pcpretrain`` without waiting, for tests that signal or kill it mid-run."""
    return subprocess.Popen(
        cli_command(*args, nproc=nproc),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(nproc),
    )


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 300
) -> None:
    """Poll ``condition`` while ``process`` runs; fail with its output if it ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def launched_workers(launcher_pid: int) -> dict[int, int]:
    """``rank -> pid`` of the processes a torchrun launcher started (Linux ``/proc``)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(v.split(b"=")[1]) for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = pid
    return ranks


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compose_config(*overrides: str):
    """The typed config that ``pcpretrain train <overrides>`` would run with (no Hydra run dir)."""
    from pcpretrain.config import compose_train_config

    return compose_train_config(overrides)


def tiny_config(run_dir: Path, *overrides: str):
    """A tiny run in ``run_dir`` for in-process tests of the training path."""
    cfg = compose_config(*TINY_OVERRIDES, *overrides)
    cfg.run.dir = str(run_dir)
    return cfg


def assert_resume_is_exact(
    overrides: list[str], stop_at: int, root: Path, nproc: int = 1, straight: Path | None = None
) -> list[dict]:
    """Run straight, then stopped at ``stop_at`` and resumed; the losses must match step for step.

    ``straight``: a finished run of the same ``overrides`` to compare with, instead of running one.
    """
    if straight is None:
        straight = root / "straight"
        run_cli("train", *overrides, f"run.dir={straight}", nproc=nproc)
    run_cli("train", *overrides, f"trainer.stop_at={stop_at}", f"run.dir={root / 'resumed'}", nproc=nproc)
    run_cli("train", *overrides, f"run.dir={root / 'resumed'}", nproc=nproc)
    expected, resumed = read_metrics(straight), read_metrics(root / "resumed")
    assert [r["step"] for r in resumed] == [r["step"] for r in expected]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    return expected


# Several processes against one (tests/train/test_distributed.py, test_fsdp.py): the global batches do
# not depend on the number of processes (logical streams), and one process accumulates the same global
# batch; so losses must agree to float rounding.
SPLIT_STEPS = 4
SPLIT_OVERRIDES = [
    *TINY_OVERRIDES,
    f"trainer.max_steps={SPLIT_STEPS}",
    "trainer.eval_every=2",
    "checkpoint.every=2",
]
# The spectral monitor runs every 2 steps in these runs, so that every engine's spectra are compared too.
ADAMW_PC = ["pc.degree=4", "spectral.every=2"]
MUON_PC = ["optimizer=muon", "pc.degree=2", "optimizer.ns_dtype=float32"]


def split_overrides(*overrides: str) -> list[str]:
    """The run's overrides (the same for any number of processes)."""
    return [*SPLIT_OVERRIDES, "data.num_workers=0", *overrides]


def train_split(run_dir: Path, *overrides: str, nproc: int) -> list[dict]:
    """Train the global batch split over ``nproc`` processes; the run's metrics."""
    run_cli("train", *split_overrides(*overrides), f"run.dir={run_dir}", nproc=nproc)
    return read_metrics(run_dir)


def assert_same_trajectory(single: list[dict], multi: list[dict]) -> None:
    """Losses, gradient norms and validation losses of two runs agree to float rounding."""
    assert [r["step"] for r in multi] == [r["step"] for r in single] == list(range(1, SPLIT_STEPS + 1))
    for one, two in zip(single, multi, strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-5)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
        assert ("val_loss" in two) == ("val_loss" in one) == (one["step"] % 2 == 0)
        if "val_loss" in one:
            assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)


def merged_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a merged model directory (one safetensors file or an indexed set)."""
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else None
    tensors = {}
    for name in files or ["model.safetensors"]:
        with safe_open(str(directory / name), framework="pt") as handle:
            names = handle.keys()  # a safetensors handle, not a dict
            tensors.update({key: handle.get_tensor(key) for key in names})
    return tensors


def read_spectra(run_dir: Path) -> dict[int, SpectraReport]:
    """The run's spectral reports by step."""
    lines = (run_dir / "spectra.jsonl").read_text().splitlines()
    return {report.step: report for report in map(SpectraReport.from_record, map(json.loads, lines))}


def assert_same_spectra(one: Path, other: Path, steps: Sequence[int] = (2, SPLIT_STEPS)) -> None:
    """Two runs whose weights agree to ~1e-5 after the same steps record the same spectra to ~1e-4."""
    first, second = read_spectra(one), read_spectra(other)
    assert sorted(first) == sorted(second) == sorted(steps)
    for step in steps:
        a_report, b_report = first[step], second[step]
        assert a_report.gmcn() == pytest.approx(b_report.gmcn(), rel=1e-4)
        assert [m.name for m in a_report.matrices] == [m.name for m in b_report.matrices]
        for a, b in zip(a_report.matrices, b_report.matrices, strict=True):
            assert (a.pc, a.layer, a.kind) == (b.pc, b.layer, b.kind)
            assert a.sigma_1 == pytest.approx(b.sigma_1, rel=1e-4), a.name
            assert a.mcn == pytest.approx(b.mcn, rel=1e-4), a.name


def assert_export_matches(run_dir: Path, single: Path, out: Path) -> None:
    """``pcpretrain export`` of the run's last unmerged checkpoint into ``out`` gives the merged model
    written during training, and the one-process run ``single``'s to AdamW rounding."""
    last = run_dir / "checkpoints" / f"step_{SPLIT_STEPS:08d}"
    run_cli("export", str(last), str(out))
    exported = merged_tensors(out)
    during_training = merged_tensors(last.with_name(f"{last.name}-merged"))
    one_process = merged_tensors(single / "checkpoints" / f"{last.name}-merged")
    assert exported.keys() == during_training.keys() == one_process.keys()
    assert not any(".pc_" in name for name in exported)
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, during_training[name], rtol=0, atol=1e-6)
        # The runs differ by rounding (reduction orders), which the sigma term of the PC gradient amplifies:
        # its coefficient <dL/dX, X> is a sum with cancellation, good to ~1e-4 relative in float32, and
        # AdamW's first steps move an element by about lr whatever its gradient's size, so elements whose
        # gradient is near zero may move apart by a few 1e-4. Measured over seeds 0-2 (4 steps): up to
        # 1.6e-4 relative to the tensor, 4.7e-4 in one element; a wrong export is off by far more.
        difference = tensor - one_process[name]
        relative = float(difference.norm() / one_process[name].norm())
        assert relative <= 1e-3 and difference.abs().max() <= 1e-3, (name, relative, difference.abs().max())


def is_top_level_op(event) -> bool:
    """No aten operator above this profiler event: a multi-tensor (``_foreach_*``, fused) operator counts
    once, although on CPUs it runs one child operator per tensor where a GPU launches one kernel."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def run_under_triton_interpreter(code: str) -> str:
    """Run ``code`` in a fresh Python from the repository root under Triton's CPU interpreter
    (``TRITON_INTERPRET=1``, read when kernels are defined, hence the new process); its stdout, after
    checking that it exited cleanly."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
