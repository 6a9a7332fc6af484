"""Turn the trainer config into an ``accelerate.Accelerator`` (device and mixed precision)."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from pcpretrain.config import ConfigError, TrainerConfig


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


def build_accelerator(cfg: TrainerConfig) -> Accelerator:
    """An Accelerator that owns device placement, autocast and (later) the distributed engine."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # The state is a process-wide singleton that refuses a second precision; a sweep runs its points
    # in one process, so each run starts from a fresh one (the process group, if any, is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=device == "cpu",
        mixed_precision="bf16" if precision == "bf16" else "no",
        step_scheduler_with_optimizer=False,
    )
