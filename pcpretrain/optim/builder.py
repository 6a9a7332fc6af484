"""Build the optimizer named by the config over the routed parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from pcpretrain.config import OptimizerConfig, resolve_compile
from pcpretrain.optim.routing import log_assignment, route


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW for every group, or Muon for hidden matrices with AdamW for the rest (the groups logged).

    ``optimizer.compile`` follows the device the model is on (``null``: compiled on CUDA)."""
    param_groups = [group.as_param_group() for group in route(model, cfg)]
    log_assignment(param_groups)
    if cfg.name == "muon":
        from pcpretrain.optim.distributed_muon import DistributedMuon

        return DistributedMuon(
            param_groups,
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            ns_steps=cfg.ns_steps,
            coefficients=cfg.ns_coefficients,
            ns_dtype=cfg.ns_dtype,
            ns_method=cfg.ns_method,
            lr_adjust=cfg.lr_adjust,
            compile_elementwise=resolve_compile(cfg.compile, _device_type(model)),
        )
    for group in param_groups:
        group.pop("use_muon")
    # Fused (CUDA and CPU): one kernel per step, and it skips a non-finite step on the device (found_inf).
    return torch.optim.AdamW(
        param_groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True,
    )


def _device_type(model: nn.Module) -> str:
    """Where the model's parameters are (``cpu`` for a model without any)."""
    return next((p.device.type for p in model.parameters()), "cpu")
