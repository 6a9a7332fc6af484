"""Device and precision resolution for the accelerate engine."""

from __future__ import annotations

import pytest
import torch

from pcpretrain.config import ConfigError, TrainConfig, TrainerConfig
from pcpretrain.train.engine import build_accelerator, resolve_device, resolve_precision


def test_auto_precision_is_fp32_on_cpu_and_explicit_values_pass_through() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error_not_a_silent_fallback() -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="trainer.device=cuda but no CUDA device is visible"):
        resolve_device("cuda")


def test_successive_runs_in_one_process_may_change_precision() -> None:
    assert (
        build_accelerator(TrainConfig(trainer=TrainerConfig(device="cpu", precision="bf16"))).mixed_precision
        == "bf16"
    )
    assert (
        build_accelerator(TrainConfig(trainer=TrainerConfig(device="cpu", precision="fp32"))).mixed_precision
        == "no"
    )
