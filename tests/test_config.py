"""Config composition: groups, typed schema, saved configs, paper recipes and shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import compose_config as composed
from hydra.errors import ConfigCompositionException

from pcpretrain.config import ConfigError, load_yaml, to_yaml
from pcpretrain.config_validation import validate


def test_default_is_the_embedded_debug_run_with_pc_degree_4_and_adamw() -> None:
    cfg = composed()
    validate(cfg)
    assert (cfg.model.name, cfg.pc.degree, cfg.optimizer.name, cfg.data.source) == (
        "debug",
        4,
        "adamw",
        "sample",
    )
    assert cfg.resume == "auto"


@pytest.mark.parametrize(
    ("name", "shape"),
    [("1B", (2048, 18, 16, 5632, 32000)), ("271M", (1024, 16, 16, 2816, 32000))],
)
def test_paper_model_shapes(name: str, shape: tuple) -> None:
    m = composed(f"model={name}").model
    assert (m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size, m.vocab_size) == shape
    assert m.rope_theta == 10000.0


def test_overrides_reach_the_typed_config() -> None:
    cfg = composed(
        "pc.degree=2", "trainer.max_steps=50", "trainer.stop_at=20", "checkpoint.every=5", "run.dir=x"
    )
    assert (cfg.pc.degree, cfg.trainer.max_steps, cfg.trainer.stop_at, cfg.checkpoint.every) == (2, 50, 20, 5)
    assert cfg.run.dir == "x"


def test_unknown_key_is_rejected_naming_the_key() -> None:
    with pytest.raises(ConfigCompositionException, match="trainer.max_stepz"):
        composed("trainer.max_stepz=3")


def test_unknown_group_option_lists_the_available_ones() -> None:
    with pytest.raises(ConfigCompositionException, match="adamw"):
        composed("optimizer=sgd")


def test_ill_typed_value_is_rejected() -> None:
    with pytest.raises(ConfigCompositionException, match="pc.degree"):
        composed("pc.degree=four")


def test_saved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = composed("pc.degree=3", "model=tiny")
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_yaml(path) == cfg


def test_damaged_saved_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  hidden_sise: 3\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_yaml(path)


def test_quickstart_recipe_sets_the_small_model_learning_rate_and_can_be_dropped() -> None:
    assert composed().optimizer.lr == 2e-3
    assert composed("~experiment").optimizer.lr == 3e-4
    assert composed("optimizer.lr=1e-3").optimizer.lr == 1e-3


PAPER = {"1b": ("1B", 3e-4, 1.5e-3), "271m": ("271M", 8.485e-4, 4.243e-3)}


@pytest.mark.parametrize("size", ["1b", "271m"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("kind", ["baseline", "pc"])
def test_paper_recipes_compose_to_the_paper_settings(size: str, optimizer: str, kind: str) -> None:
    cfg = composed(f"experiment=paper_{size}_{optimizer}_{kind}")
    model, adamw_lr, muon_lr = PAPER[size]
    assert (cfg.model.name, cfg.optimizer.name) == (model, optimizer)
    assert cfg.optimizer.lr == (adamw_lr if optimizer == "adamw" else muon_lr)
    assert cfg.pc.degree == (0 if kind == "baseline" else {"adamw": 4, "muon": 2}[optimizer])
    assert (cfg.data.seq_len, cfg.trainer.batch_size * cfg.data.seq_len) == (8192, 2_621_440)
    assert (cfg.trainer.max_steps, cfg.scheduler.warmup_steps, cfg.scheduler.end_ratio) == (61100, 611, 0.1)
    assert cfg.data.hub.path == "HuggingFaceFW/fineweb"


def test_tokenizer_kind_and_special_token_overrides() -> None:
    # Hydra needs special tokens quoted: data.tokenizer.eos_token='<|eot_id|>'
    cfg = composed(
        "data.tokenizer.kind=bpe", "data.tokenizer.bos_token='<s>'", "data.tokenizer.eos_token='<|eot_id|>'"
    )
    validate(cfg)
    assert (cfg.data.tokenizer.kind, cfg.data.tokenizer.bos_token, cfg.data.tokenizer.eos_token) == (
        "bpe",
        "<s>",
        "<|eot_id|>",
    )
    assert composed().data.tokenizer.kind == "sentencepiece"
    with pytest.raises(ConfigError, match=r"data.tokenizer.kind='wordpiece'.*sentencepiece.*bpe"):
        validate(composed("data.tokenizer.kind=wordpiece"))
