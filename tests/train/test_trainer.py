"""The trainer's logged learning rates: one per parameter category, not the first group's."""

from __future__ import annotations

import pytest

from pcpretrain.config import ModelConfig, OptimizerConfig
from pcpretrain.model import build_model
from pcpretrain.optim import build_optimizer
from pcpretrain.pc import apply_pc
from pcpretrain.train.trainer import learning_rates


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_each_category_logs_its_own_lr_and_lr_is_the_hidden_matrices(name: str) -> None:
    cfg = OptimizerConfig(name=name, lr=0.02, adamw_lr=1e-3 if name == "muon" else None)
    cfg.categories.embedding.lr_mult = 0.5
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), 64)
    apply_pc(model, 2, ["*mlp.down_proj"], 2, seed=0)
    optimizer = build_optimizer(model, cfg)
    assert optimizer.param_groups[0]["category"] == "pc_gamma"
    lrs = learning_rates(optimizer.param_groups)
    assert lrs["lr"] == lrs["lr/hidden_matrix"] == 0.02
    other = 1e-3 if name == "muon" else 0.02
    assert lrs["lr/embedding"] == pytest.approx(0.5 * other)
    assert lrs["lr/lm_head"] == lrs["lr/vector"] == lrs["lr/pc_gamma"] == pytest.approx(other)
    assert all(isinstance(value, float) for value in lrs.values())
