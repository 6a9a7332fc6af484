"""Build the optimizer named by the config."""

from __future__ import annotations

import torch
from torch import nn

from pcpretrain.config import OptimizerConfig
from pcpretrain.optim.param_groups import weight_decay_groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW over the model's parameters; fused kernels on CUDA, the foreach path elsewhere."""
    groups = weight_decay_groups(model, cfg.weight_decay)
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=on_cuda or None,
    )
