"""Per-matrix spectra records and the report's summary, metrics and round trip through JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pcpretrain.spectra.analysis import MatrixSpectrum, SpectraReport, matrix_spectra, singular_values
from pcpretrain.spectra.measures import pc_singular_values


def spectrum(name: str, layer: int, kind: str, pc: bool, mcn: float, error: float | None = None):
    histogram = [0] * 50
    histogram[-1] = 2 if pc else 1
    return MatrixSpectrum(name, layer, kind, pc, 1.0 + layer, mcn, error, histogram)


def mixed_report() -> SpectraReport:
    return SpectraReport(
        step=7,
        matrices=[
            spectrum("model.layers.1.mlp.up_proj.weight", 1, "up_proj", True, 4.0, 0.01),
            spectrum("model.layers.0.self_attn.q_proj.weight", 0, "q_proj", False, 9.0),
            spectrum("model.layers.0.mlp.down_proj.weight", 0, "down_proj", True, 1.0, 0.03),
            spectrum("model.layers.0.self_attn.k_proj.weight", 0, "k_proj", False, 16.0),
        ],
        source="training",
    )


def test_singular_values_are_float32_or_better_and_descending() -> None:
    stack = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(0))
    for dtype, expected in [(torch.bfloat16, torch.float32), (torch.float64, torch.float64)]:
        values = singular_values(stack.to(dtype))
        assert values.dtype == expected and values.shape == (3, 5)
        assert torch.all(values[:, :-1] >= values[:, 1:])
        expected_values = torch.linalg.svdvals(stack.to(dtype).double())
        torch.testing.assert_close(values.double(), expected_values, rtol=1e-5, atol=1e-6)


def test_matrix_spectra_of_plain_and_pc_layers() -> None:
    raw = torch.tensor([[2.0, 1.0, 0.5], [1.0, 0.5, 0.25]], dtype=torch.float64)
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    plain = matrix_spectra(names, raw)
    assert [(m.layer, m.kind, m.pc, m.sigma_1, m.mcn) for m in plain] == [
        (0, "up_proj", False, 2.0, 4.0),
        (1, "up_proj", False, 1.0, 4.0),
    ]
    assert all(m.estimate_rel_error is None and sum(m.histogram) == 3 for m in plain)

    sigma = torch.tensor([1.9, 1.0], dtype=torch.float64)
    pc = matrix_spectra(names, raw, pc_sigma=sigma, degree=4)
    mapped = pc_singular_values(raw, sigma, 4)
    assert all(m.pc for m in pc)
    assert [m.sigma_1 for m in pc] == pytest.approx(mapped[:, 0].tolist())
    assert [m.mcn for m in pc] == pytest.approx((mapped[:, 0] / mapped[:, -1]).tolist())
    assert [m.estimate_rel_error for m in pc] == pytest.approx([0.05, 0.0])


def test_matrix_spectra_rejects_a_name_that_is_not_a_hidden_matrix() -> None:
    with pytest.raises(ValueError, match="lm_head"):
        matrix_spectra(["lm_head.weight"], torch.ones(1, 2))


def test_report_summary_groups_pc_and_other_matrices() -> None:
    report = mixed_report()
    assert [m.kind for m in report.matrices] == ["q_proj", "k_proj", "down_proj", "up_proj"]
    summary = report.summary()
    assert summary["gmcn"] == pytest.approx((4.0 * 9.0 * 1.0 * 16.0) ** 0.25)
    assert summary["gmcn_pc"] == pytest.approx(2.0)
    assert summary["gmcn_no_pc"] == pytest.approx(12.0)
    assert summary["sigma_1_max"] == 2.0
    assert summary["estimate_rel_error_max"] == pytest.approx(0.03)
    assert summary["estimate_rel_error_mean"] == pytest.approx(0.02)
    assert summary["matrices"] == 4
    assert report.histogram(pc=True)[-1] == 4 and report.histogram(pc=False)[-1] == 2
    assert report.metrics()["spectral/gmcn_pc"] == pytest.approx(2.0)


def test_metrics_leave_out_what_a_report_without_pc_layers_lacks() -> None:
    report = SpectraReport(
        step=1, matrices=[spectrum("model.layers.0.mlp.up_proj.weight", 0, "up_proj", False, 3.0)]
    )
    assert set(report.metrics()) == {
        "spectral/gmcn",
        "spectral/gmcn_no_pc",
        "spectral/sigma_1_max",
        "spectral/matrices",
    }


def test_record_round_trips_through_json() -> None:
    report = mixed_report()
    report.extra["checkpoint"] = "step_00000007"
    line = json.dumps(report.record())
    back = SpectraReport.from_record(json.loads(line))
    assert back.record() == report.record()
    assert back.step == 7 and back.source == "training" and back.extra == {"checkpoint": "step_00000007"}
    assert math.isclose(back.gmcn(pc=True), report.gmcn(pc=True))
