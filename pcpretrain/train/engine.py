"""Turn the trainer and distributed config into an ``accelerate.Accelerator`` with the chosen engine.

Users never write accelerate or DeepSpeed config files: the engine's plugin is built here from the
run config. The number of processes is the launcher's (``torchrun``, ``accelerate launch`` or
``srun`` through :mod:`pcpretrain.slurm_env`), read from ``WORLD_SIZE``.

Every engine keeps fp32 weights and reduces gradients in fp32; ``bf16`` means autocast compute.
This matters for PC layers: the polynomial is evaluated on the fp32 matrix, never on a bf16 copy.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DeepSpeedPlugin,
    FullyShardedDataParallelPlugin,
    InitProcessGroupKwargs,
    TorchDynamoPlugin,
)

from pcpretrain.compat import force_fsdp_state, reset_accelerate_state
from pcpretrain.config import (
    ZERO_ENGINES,
    ConfigError,
    DistributedConfig,
    TrainConfig,
    TrainerConfig,
    resolve_compile,
)
from pcpretrain.errors import TrainingError, compile_failure_message

# The decoder block is the unit FSDP2 shards and gathers: a PC layer's whole matrix is then
# materialized inside the block's forward.
FSDP_WRAP_CLASS = "LlamaDecoderLayer"
SHARDED_ENGINES = ("fsdp", *ZERO_ENGINES)


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when visible; asking for CUDA without one is an error, not a silent fallback."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu or auto")
    return requested


def resolve_precision(requested: str, device: str) -> str:
    """``auto`` is bf16 autocast on GPUs that support it and plain fp32 elsewhere."""
    if requested != "auto":
        return requested
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def gradient_accumulation_steps(trainer: TrainerConfig, world_size: int) -> int:
    """Micro-batches per optimizer step on each rank, so that the global batch is ``batch_size``."""
    return trainer.batch_size // (trainer.micro_batch_size * world_size)


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator that owns device placement, autocast, gradient accumulation and the engine."""
    engine = cfg.distributed.engine
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    world_size = launched_world_size()
    grad_accum = gradient_accumulation_steps(cfg.trainer, world_size)
    if device == "cpu":
        # Tell DeepSpeed (imported on demand below) what it would otherwise guess, with a warning per run.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.trainer.tf32
        torch.backends.cudnn.allow_tf32 = cfg.trainer.tf32
    group_kwargs: dict[str, Any] = {"timeout": timedelta(seconds=cfg.distributed.timeout_s)}
    engine_kwargs: dict[str, Any] = {}
    if engine == "fsdp":
        ensure_launcher_env()
        engine_kwargs["fsdp_plugin"] = fsdp_plugin(cfg.distributed)
    elif engine in ZERO_ENGINES:
        ensure_launcher_env()
        engine_kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
            hf_ds_config=deepspeed_config(cfg, precision, grad_accum)
        )
        if device == "cpu":
            # accelerate only picks a backend for DeepSpeed on accelerators; gloo serves CPUs.
            group_kwargs["backend"] = "gloo"
    forget_other_engines(engine)
    # The state is a process-wide singleton that refuses a second precision and keeps the last run's
    # engine; a sweep runs its points in one process, so each run starts from a fresh one. The process
    # group, if any, is kept: accelerate creates one only when none is initialized.
    reset_accelerate_state()
    accelerator = Accelerator(
        cpu=device == "cpu" and engine not in ZERO_ENGINES,
        # DeepSpeed applies autocast itself (``torch_autocast`` in its config).
        mixed_precision="bf16" if precision == "bf16" and engine not in ZERO_ENGINES else "no",
        gradient_accumulation_steps=grad_accum,
        step_scheduler_with_optimizer=False,
        dynamo_plugin=TorchDynamoPlugin(
            backend="inductor" if resolve_compile(cfg.trainer.compile, device) else "no",
            use_regional_compilation=True,
        ),
        kwargs_handlers=[InitProcessGroupKwargs(**group_kwargs)],
        **engine_kwargs,
    )
    if engine == "fsdp":
        force_fsdp_state(accelerator, engine_kwargs["fsdp_plugin"])  # torch's fully_shard runs on CPUs too
    return accelerator


def model_compile_error(error: Exception, last_good: str) -> TrainingError:
    """The error for a model that ``trainer.compile`` (on by default on GPUs) could not compile: a
    machine without a working compiler or Triton would otherwise end in dynamo's traceback, which does
    not say that the run trains without compilation."""
    remedy = f"set trainer.compile=false to train it eagerly (slower on GPUs); {last_good}"
    return TrainingError(compile_failure_message("the model", error, remedy))


def forget_other_engines(engine: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Clear the engine flags that a previous run in this process left for accelerate.

    accelerate sets ``ACCELERATE_USE_DEEPSPEED`` or ``ACCELERATE_USE_FSDP`` when given a plugin and
    reads them back when building the next accelerator; in an in-process sweep they would otherwise
    choose the next run's engine (on GPUs a ddp run after an fsdp one would get a default FSDP plugin).
    """
    if engine not in ZERO_ENGINES:
        environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    if engine != "fsdp":
        environ.pop("ACCELERATE_USE_FSDP", None)


def ensure_launcher_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Give a process started without a launcher the variables of a one-process launch.

    FSDP and DeepSpeed always need a process group, even for a single process; without this,
    ``python -m pcpretrain train distributed=zero2`` would fail deep inside accelerate.
    """
    if "LOCAL_RANK" in environ:
        return
    environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            environ["MASTER_PORT"] = str(probe.getsockname()[1])


def fsdp_plugin(cfg: DistributedConfig) -> FullyShardedDataParallelPlugin:
    """FSDP2 sharding each decoder layer, fp32 parameters and fp32 gradient reduction, sharded saves."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[FSDP_WRAP_CLASS],
        reshard_after_forward=cfg.fsdp_reshard_after_forward,
        state_dict_type="SHARDED_STATE_DICT",
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32),
        cpu_ram_efficient_loading=False,
    )


def deepspeed_config(cfg: TrainConfig, precision: str, grad_accum: int) -> dict[str, Any]:
    """The DeepSpeed config for a ZeRO engine, derived entirely from the run config."""
    stage = int(cfg.distributed.engine.removeprefix("zero"))
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": cfg.trainer.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.trainer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        # An empty list: DeepSpeed would otherwise reduce nn.Linear gradients in the autocast dtype.
        "torch_autocast": {
            "enabled": precision == "bf16",
            "dtype": "bfloat16",
            "lower_precision_safe_modules": [],
        },
        "communication_data_type": "fp32",
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
