"""Config composition: groups, typed schema, validation messages, paper shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import compose_config as composed
from hydra.errors import ConfigCompositionException

from pcpretrain.config import ConfigError, check_override_keys, load_yaml, to_yaml, validate


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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pc.degree=7", r"pc.degree=7 is not allowed; choose one of 0, 1, 2, 3, 4"),
        ("trainer.precision=fp8", r"trainer.precision='fp8' is not allowed; choose one of auto, fp32, bf16"),
        ("trainer.stop_at=500", r"trainer.stop_at=500 must lie in \[1, trainer.max_steps=100\]"),
        ("trainer.batch_size=12", r"trainer.batch_size=12 must be a multiple of trainer.micro_batch_size=8"),
        ("checkpoint.final_forms=[zipped]", r"checkpoint.final_forms='zipped' is not allowed"),
        (
            "logger.wandb.mode=sometimes",
            r"logger.wandb.mode='sometimes' is not allowed; choose one of online",
        ),
        ("optimizer.betas=[0.9]", r"optimizer.betas=\[0.9\] must be two numbers"),
        (
            "optimizer.ns_method=fast",
            r"optimizer.ns_method='fast' is not allowed; choose one of standard, gram",
        ),
        (
            "optimizer.compile=true",
            r"optimizer.compile=true applies to muon only; optimizer=adamw already runs torch's fused",
        ),
        ("data.seq_len=4096", r"data.seq_len=4096 exceeds model.max_seq_len=1024"),
        ("data=files", r"data.train_files is not set; data.source=files needs it"),
        ("data.source=hub", r"data.hub.path is not set"),
        ("data.source=shards", r"data.shards_dir is not set"),
        ("data.num_workers=-1", r"data.num_workers=-1 is not allowed; it must be >= 0"),
        ("resume=/no/such/dir", r"resume='/no/such/dir': no such checkpoint directory"),
    ],
)
def test_invalid_values_name_key_and_allowed_values(override: str, message: str) -> None:
    cfg = composed(*override.split())
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


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


GROUPS = {"model", "pc", "optimizer", "scheduler", "data", "trainer", "checkpoint", "logger", "experiment"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer.max_stepz=3",
            r"unknown key 'trainer.max_stepz': trainer has max_steps, .*did you mean trainer.max_steps",
        ),
        ("+optimzer.lr=1", r"the top level has run, model, .*did you mean optimizer\?"),
        ("data.tokenizer.path.x=1", r"data.tokenizer.path is a single value"),
    ],
)
def test_unknown_override_keys_are_named_with_the_valid_ones(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_override_keys([override], GROUPS)


def test_valid_keys_group_choices_and_hydra_settings_pass() -> None:
    check_override_keys(
        ["pc.degree=0,4", "model=tiny", "~experiment", "hydra.run.dir=x", "data.tokenizer.path=a"], GROUPS
    )


def test_a_source_without_a_held_out_set_is_refused() -> None:
    cfg = composed("data=files", "data.train_files=[a.jsonl]")
    with pytest.raises(ConfigError, match="has no held-out set; set data.validation_files"):
        validate(cfg)
    validate(composed("data=files", "data.train_files=[a.jsonl]", "data.validation_documents=10"))


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


def test_engine_and_optimizer_combinations_are_checked() -> None:
    with pytest.raises(ConfigError, match="optimizer=muon is not supported with distributed=zero2"):
        validate(composed("optimizer=muon", "distributed=zero2"))
    with pytest.raises(ConfigError, match="distributed=single but the launcher started 4 processes"):
        validate(composed("distributed=single", "trainer.batch_size=32"), world_size=4)
    with pytest.raises(ConfigError, match="distributed.stop_signals='SIGKILL'"):
        validate(composed("distributed.stop_signals=[SIGKILL]"))
    for engine in ("single", "ddp", "fsdp", "zero1", "zero2", "zero3"):
        validate(composed(f"distributed={engine}"))


def test_a_tokenizer_size_beside_a_tokenizer_file_is_refused_not_ignored(tmp_path: Path) -> None:
    model = tmp_path / "tok.model"
    model.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data.tokenizer.vocab_size=512 sizes a tokenizer trained here"):
        validate(composed(f"data.tokenizer.path={model}", "data.tokenizer.vocab_size=512"))
    validate(composed(f"data.tokenizer.path={model}"))
    assert composed().data.tokenizer.vocab_size is None


def test_a_tokenizer_path_may_be_a_file_a_directory_or_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    for path in ("tok", "tok/tokenizer.json", "meta-llama/Meta-Llama-3-8B", "Qwen/Qwen2.5-0.5B"):
        validate(composed(f"data.tokenizer.path={path}"))
    for missing in ("missing/tokenizer.json", "nowhere.model", "./org/name", "a/b/c"):
        with pytest.raises(ConfigError, match="no such file or directory, nor a Hub id org/name") as info:
            validate(composed(f"data.tokenizer.path={missing}"))
        assert f"data.tokenizer.path={missing!r}" in str(info.value)


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
