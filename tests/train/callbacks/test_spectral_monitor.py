"""The spectral monitor: when it runs, what it writes, and values that match an independent float64
computation (their agreement across engines is checked with each engine's runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import wandb
from helpers import ADAMW_PC, SPLIT_STEPS, read_metrics, read_spectra, tiny_config, train_split
from safetensors.torch import load_file

from pcpretrain.pc import precondition
from pcpretrain.pc.spectral import SIGMA_EPS
from pcpretrain.spectra.analysis import SpectraReport
from pcpretrain.train.callbacks import spectral_monitor
from pcpretrain.train.callbacks.base import Histogram
from pcpretrain.train.callbacks.metrics_file import MetricsFile
from pcpretrain.train.callbacks.spectral_monitor import SpectralMonitor
from pcpretrain.train.callbacks.wandb_logger import wandb_values
from pcpretrain.train.run import build_training_model

PC_DEGREE = 4
HISTOGRAM_KEYS = {"spectral/sigma_ratio_pc", "spectral/sigma_ratio_no_pc"}


def fake_trainer(step: int, model: torch.nn.Module | None = None, finished: bool = False) -> SimpleNamespace:
    accelerator = SimpleNamespace(is_main_process=True, unwrap_model=lambda wrapped: wrapped)
    return SimpleNamespace(
        state=SimpleNamespace(step=step),
        schedule_finished=finished,
        last_step=100,
        model=model,
        accelerator=accelerator,
    )


def reference_values(weight: torch.Tensor, u: torch.Tensor | None, v: torch.Tensor | None) -> torch.Tensor:
    """Singular values in float64 of the raw weight, or for a PC layer of its transform without gamma."""
    w = weight.double()
    if u is None:
        return torch.linalg.svdvals(w)
    sigma = u.double() @ w @ v.double() + SIGMA_EPS
    return torch.linalg.svdvals(precondition(w, PC_DEGREE, sigma))


def assert_matches_reference(report: SpectraReport, tensors: dict[str, torch.Tensor]) -> None:
    """Every matrix's sigma_1 and MCN equal the float64 reference from the weights and PC buffers."""
    for matrix in report.matrices:
        prefix = matrix.name.removesuffix(".weight")
        u, v = tensors.get(f"{prefix}.pc_u"), tensors.get(f"{prefix}.pc_v")
        assert matrix.pc == (u is not None), matrix.name
        values = reference_values(tensors[matrix.name], u, v)
        smallest = values[-math.ceil(0.1 * values.numel()) :].mean()
        assert matrix.sigma_1 == pytest.approx(values[0].item(), rel=1e-4), matrix.name
        assert matrix.mcn == pytest.approx((values[0] / smallest).item(), rel=1e-4), matrix.name


def test_due_every_interval_and_at_the_schedule_end_only() -> None:
    monitor = SpectralMonitor(Path("unused"), every=2)
    assert [monitor.due(fake_trainer(step)) for step in range(1, 6)] == [False, True, False, True, False]
    assert monitor.due(fake_trainer(5, finished=True))
    assert not SpectralMonitor(Path("unused"), every=0, at_end=False).due(fake_trainer(5, finished=True))
    assert SpectralMonitor(Path("unused"), every=0).due(fake_trainer(5, finished=True))
    assert not monitor.needs_step_values(fake_trainer(3)) and monitor.needs_step_values(fake_trainer(4))


def test_a_step_it_skips_computes_and_reads_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("analysed on a step the monitor is not due")

    monkeypatch.setattr(spectral_monitor, "model_spectra", fail)
    metrics: dict = {"step": 3}
    SpectralMonitor(tmp_path / "spectra.jsonl", every=2).on_step_end(fake_trainer(3), metrics)
    assert metrics == {"step": 3} and not (tmp_path / "spectra.jsonl").exists()


def test_a_due_step_adds_metrics_histograms_and_a_record_matching_float64(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, f"pc.degree={PC_DEGREE}")
    model, converted = build_training_model(cfg, vocab_size=128)
    path = tmp_path / "spectra.jsonl"
    monitor = SpectralMonitor(path, every=2)
    metrics: dict = {"step": 2}
    monitor.on_step_end(fake_trainer(2, model), metrics)

    report = SpectraReport.from_record(json.loads(path.read_text()))
    assert report.step == 2 and report.source == "training"
    assert len(report.matrices) == 7 * cfg.model.num_layers
    assert sum(matrix.pc for matrix in report.matrices) == len(converted)
    assert_matches_reference(report, {k: t.detach() for k, t in model.state_dict().items()})
    assert metrics["spectral/gmcn"] == pytest.approx(report.gmcn())
    assert metrics["spectral/matrices"] == 7 * cfg.model.num_layers
    pc_histogram = metrics["spectral/sigma_ratio_pc"]
    assert pc_histogram == Histogram(report.histogram(pc=True), 0.0, 1.0)
    assert set(metrics) >= HISTOGRAM_KEYS

    monitor.on_train_start(fake_trainer(1))  # a run resumed at step 1 drops the record of step 2
    assert path.read_text() == ""


def test_histograms_reach_wandb_but_not_metrics_jsonl(tmp_path: Path) -> None:
    metrics = {"step": 4, "loss": 1.5, "spectral/sigma_ratio_pc": Histogram([1, 0, 2], 0.0, 1.0)}
    MetricsFile(tmp_path / "metrics.jsonl", log_every=1).on_step_end(fake_trainer(4), metrics)
    assert read_metrics(tmp_path) == [{"step": 4, "loss": 1.5}]
    logged = wandb_values(metrics)
    assert logged["loss"] == 1.5
    histogram = logged["spectral/sigma_ratio_pc"]
    assert isinstance(histogram, wandb.Histogram)
    assert list(histogram.histogram) == [1, 0, 2]
    np.testing.assert_allclose(histogram.bins, [0.0, 1 / 3, 2 / 3, 1.0])


@pytest.fixture(scope="module")
def logged_every_third_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run analysed every 2 steps and logged every 3rd, without the evaluation and checkpoints that
    do not change the weights, to keep it short. (Spectra under ddp, zero2, zero3 and fsdp are compared
    with one process in tests/train/test_distributed.py and test_fsdp.py.)"""
    run_dir = tmp_path_factory.mktemp("spectral") / "run"
    lean = ["trainer.eval_every=0", "checkpoint.every=0", "checkpoint.final_forms=[]", "trainer.log_every=3"]
    train_split(run_dir, *ADAMW_PC, *lean, nproc=1)
    return run_dir


@pytest.mark.slow
def test_spectral_steps_are_recorded_and_logged(logged_every_third_step: Path) -> None:
    assert sorted(read_spectra(logged_every_third_step)) == [2, 4]
    records = read_metrics(logged_every_third_step)
    assert [r["step"] for r in records] == [2, 3, 4]  # step 2 is logged for its spectra
    for record in records:
        assert ("spectral/gmcn" in record) == (record["step"] % 2 == 0)
        assert "loss" in record
        assert not HISTOGRAM_KEYS & set(record)
        assert all(isinstance(value, (int, float, str)) for value in record.values())


@pytest.mark.slow
def test_the_logged_gmcn_is_the_recorded_reports(single_adamw: Path) -> None:
    reports = read_spectra(single_adamw)
    for record in read_metrics(single_adamw):
        if record["step"] in reports:
            assert record["spectral/gmcn"] == pytest.approx(reports[record["step"]].gmcn())


@pytest.mark.slow
def test_recorded_pc_spectra_equal_the_transform_of_the_checkpoint_weights(single_adamw: Path) -> None:
    report = read_spectra(single_adamw)[SPLIT_STEPS]
    checkpoint = single_adamw / "checkpoints" / f"step_{SPLIT_STEPS:08d}" / "model.safetensors"
    assert any(matrix.pc for matrix in report.matrices)
    assert_matches_reference(report, load_file(str(checkpoint)))
