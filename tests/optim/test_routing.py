"""Declared routing: categories by name and shape, never by size; Muon gets hidden matrices only."""

from __future__ import annotations

import json

import pytest

from pcpretrain import pc
from pcpretrain.config import ModelConfig, OptimizerConfig
from pcpretrain.model import build_model
from pcpretrain.optim import build_optimizer
from pcpretrain.optim.routing import categorize, describe, route


@pytest.fixture
def small_vocab_model():
    """A vocabulary far below 10,000 rows: embeddings must still not go to Muon."""
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), 100)
    pc.apply_pc(model, 2)
    return model


def by_category(groups) -> dict:
    return {g.category: g for g in groups}


def test_categories_follow_names_and_shapes(small_vocab_model) -> None:
    names = dict(small_vocab_model.named_parameters())
    assert categorize("model.embed_tokens.weight", names["model.embed_tokens.weight"]) == "embedding"
    assert categorize("lm_head.weight", names["lm_head.weight"]) == "lm_head"
    assert categorize("model.norm.weight", names["model.norm.weight"]) == "vector"
    gamma = "model.layers.0.mlp.up_proj.pc_gamma"
    assert categorize(gamma, names[gamma]) == "pc_gamma"
    assert categorize(
        "model.layers.1.self_attn.q_proj.weight", names["model.layers.1.self_attn.q_proj.weight"]
    ) == ("hidden_matrix")


def test_muon_takes_hidden_matrices_only_even_with_a_small_vocabulary(small_vocab_model) -> None:
    groups = by_category(route(small_vocab_model, OptimizerConfig(name="muon")))
    assert [c for c, g in groups.items() if g.use_muon] == ["hidden_matrix"]
    assert "model.embed_tokens.weight" in groups["embedding"].names
    assert groups["lm_head"].names == ["lm_head.weight"]
    muon_names = groups["hidden_matrix"].names
    assert not any("embed" in n or "lm_head" in n or "norm" in n or "pc_gamma" in n for n in muon_names)
    assert len(muon_names) == 2 * 7
    total = sum(len(g.params) for g in groups.values())
    assert total == len(list(small_vocab_model.parameters()))


def test_category_multipliers_weight_decay_and_separate_adamw_lr(small_vocab_model) -> None:
    cfg = OptimizerConfig(name="muon", lr=1e-3, adamw_lr=5e-4, weight_decay=0.1)
    cfg.categories.embedding.lr_mult = 2.0
    groups = by_category(route(small_vocab_model, cfg))
    assert groups["hidden_matrix"].lr == 1e-3
    assert groups["embedding"].lr == 1e-3 and groups["lm_head"].lr == 5e-4
    assert groups["vector"].weight_decay == 0.0 and groups["pc_gamma"].weight_decay == 0.0
    assert groups["hidden_matrix"].weight_decay == 0.1


def test_adamw_assignment_is_described_with_every_name(small_vocab_model) -> None:
    optimizer = build_optimizer(small_vocab_model, OptimizerConfig(name="adamw"))
    saved = json.loads(json.dumps(describe(optimizer.param_groups)))
    assert {entry["optimizer"] for entry in saved} == {"adamw"}
    assert sum(entry["count"] for entry in saved) == len(list(small_vocab_model.parameters()))
    assert len(optimizer.param_groups) == len(saved)


@pytest.mark.parametrize(
    ("requested", "device", "compiled"), [(None, "cpu", False), (None, "meta", False), (True, "cpu", True)]
)
def test_muon_compiles_its_elementwise_work_where_the_model_is_on_a_gpu_or_when_told(
    requested: bool | None, device: str, compiled: bool
) -> None:
    """``optimizer.compile=null`` follows the device the model is on, as ``trainer.compile`` does (on
    CUDA: see tests/train/test_gpu.py)."""
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), 100)
    optimizer = build_optimizer(model.to(device), OptimizerConfig(name="muon", compile=requested))
    assert optimizer.compile_elementwise is compiled
