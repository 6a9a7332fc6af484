"""Weight decay goes to matrices only; norms and PC gammas are never decayed."""

from __future__ import annotations

from pcpretrain import pc
from pcpretrain.config import ModelConfig, OptimizerConfig
from pcpretrain.model import build_model
from pcpretrain.optim import build_optimizer


def test_matrices_decay_vectors_and_gammas_do_not() -> None:
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), 100)
    pc.apply_pc(model, 4)
    optimizer = build_optimizer(model, OptimizerConfig(weight_decay=0.1))
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and undecayed["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in decayed["names"] and "lm_head.weight" in decayed["names"]
    assert "model.layers.0.mlp.up_proj.pc_gamma" in undecayed["names"]
    assert "model.norm.weight" in undecayed["names"]
    assert not any(name.endswith("pc_gamma") or "norm" in name for name in decayed["names"])
    n_params = sum(1 for p in model.parameters())
    assert len(decayed["params"]) + len(undecayed["params"]) == n_params
