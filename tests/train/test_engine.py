"""Device and precision resolution for the accelerate engine."""

from __future__ import annotations

import pytest
import torch

from pcpretrain.config import ConfigError, DistributedConfig, TrainConfig, TrainerConfig, resolve_compile
from pcpretrain.train.engine import (
    build_accelerator,
    deepspeed_config,
    ensure_launcher_env,
    forget_other_engines,
    fsdp_plugin,
    gradient_accumulation_steps,
    resolve_device,
    resolve_precision,
)


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


def test_deepspeed_config_comes_from_the_run_config() -> None:
    cfg = TrainConfig(
        trainer=TrainerConfig(batch_size=32, micro_batch_size=4, grad_clip=0.5),
        distributed=DistributedConfig(engine="zero3"),
    )
    ds = deepspeed_config(cfg, "bf16", gradient_accumulation_steps(cfg.trainer, world_size=2))
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
    # fp32 weights and fp32 gradient reduction; bf16 is autocast only, so PC sees fp32 matrices.
    assert ds["bf16"] == {"enabled": False} and ds["communication_data_type"] == "fp32"
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}


def test_fsdp_plugin_shards_decoder_layers_with_fp32_parameters_and_reduction() -> None:
    plugin = fsdp_plugin(DistributedConfig(engine="fsdp"))
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.mixed_precision_policy.param_dtype == torch.float32
    assert plugin.mixed_precision_policy.reduce_dtype == torch.float32


@pytest.mark.parametrize(
    ("engine", "kept"),
    [("ddp", set()), ("fsdp", {"ACCELERATE_USE_FSDP"}), ("zero3", {"ACCELERATE_USE_DEEPSPEED"})],
)
def test_a_previous_run_s_engine_flag_does_not_choose_the_next_engine(engine: str, kept: set[str]) -> None:
    environ = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_FSDP": "true"}
    forget_other_engines(engine, environ)
    assert environ.keys() == kept


def test_a_process_without_launcher_gets_one_process_launch_variables() -> None:
    environ: dict[str, str] = {}
    ensure_launcher_env(environ)
    assert environ["RANK"] == environ["LOCAL_RANK"] == "0" and environ["WORLD_SIZE"] == "1"
    assert environ["MASTER_ADDR"] == "127.0.0.1" and int(environ["MASTER_PORT"]) > 0
    launched = {"LOCAL_RANK": "3", "RANK": "11", "WORLD_SIZE": "16"}
    ensure_launcher_env(launched)
    assert launched == {"LOCAL_RANK": "3", "RANK": "11", "WORLD_SIZE": "16"}


def test_compilation_defaults_to_gpus_only() -> None:
    assert resolve_compile(None, "cuda") and not resolve_compile(None, "cpu")
    assert resolve_compile(True, "cpu") and not resolve_compile(False, "cuda")
