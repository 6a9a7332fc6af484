"""The single-GPU path: bf16 autocast, fused AdamW, MFU in the metrics. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from pcpretrain.model import peak_flops
from pcpretrain.train.run import run_training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_one_gpu_run_uses_bf16_autocast_and_reports_mfu(tmp_path: Path) -> None:
    summary = run_training(tiny_config(tmp_path, "trainer.max_steps=4", "trainer.device=auto"), tmp_path)
    assert summary.step == 4
    records = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    if peak_flops(torch.device("cuda")) is not None:
        assert all('"mfu"' in line for line in records)
    assert summary.val_loss is not None and summary.val_loss == summary.val_loss  # finite, not NaN
