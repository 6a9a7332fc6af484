"""Validation: out-of-range values and unknown override keys are refused, naming the key and what is
allowed; valid combinations pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import compose_config as composed

from pcpretrain.config import ConfigError
from pcpretrain.config_validation import check_override_keys, validate


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
