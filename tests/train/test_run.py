"""The training path in-process: exact resume, failure handling, refusing unsafe resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_OVERRIDES, compose_config, tiny_config

from pcpretrain import checkpoint as ckpt
from pcpretrain.config import ConfigError
from pcpretrain.errors import CheckpointError, NonFiniteLossError
from pcpretrain.train import trainer as trainer_module
from pcpretrain.train.engine import build_accelerator
from pcpretrain.train.run import build_pc_step, build_training_model, run_training


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    run_training(tiny_config(run_dir, "trainer.max_steps=6", "checkpoint.every=2"), run_dir)
    return run_dir


def test_damaged_newest_checkpoint_is_skipped_and_the_run_still_ends_identically(
    straight_run: Path, tmp_path: Path
) -> None:
    run_training(
        tiny_config(tmp_path, "trainer.max_steps=6", "checkpoint.every=2", "trainer.stop_at=4"), tmp_path
    )
    newest = ckpt.unmerged_dir(tmp_path / "checkpoints", 4)
    (newest / "optimizer.bin").write_bytes(b"torn write")
    summary = run_training(tiny_config(tmp_path, "trainer.max_steps=6", "checkpoint.every=2"), tmp_path)
    assert summary.step == 6
    assert losses(tmp_path) == losses(straight_run)
    ckpt.verify_checkpoint(ckpt.unmerged_dir(tmp_path / "checkpoints", 4))


def test_non_finite_loss_stops_without_touching_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = trainer_module.causal_lm_loss
    calls = {"n": 0}

    def loss_that_explodes_at_step_3(model, windows, **kwargs):
        calls["n"] += 1
        loss = real_loss(model, windows, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss  # 2 micro-batches per step

    monkeypatch.setattr(trainer_module, "causal_lm_loss", loss_that_explodes_at_step_3)
    with pytest.raises(NonFiniteLossError, match=r"step 3.*last good checkpoint: .*step_00000002"):
        run_training(tiny_config(tmp_path, "trainer.max_steps=6", "checkpoint.every=2"), tmp_path)
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_00000002"]
    ckpt.verify_checkpoint(root / "step_00000002")
    assert max(losses(tmp_path)) == 2


def test_resuming_into_a_different_model_shape_is_refused_and_nothing_is_overwritten(
    straight_run: Path, tmp_path: Path
) -> None:
    run_training(tiny_config(tmp_path, "trainer.max_steps=6", "trainer.stop_at=2"), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"model.hidden_size: checkpoint 64, now 32"):
        run_training(tiny_config(tmp_path, "trainer.max_steps=6", "model.hidden_size=32"), tmp_path)
    with pytest.raises(CheckpointError, match=r"pc.degree: checkpoint 4, now 2"):
        run_training(tiny_config(tmp_path, "trainer.max_steps=6", "pc.degree=2"), tmp_path)
    assert snapshot(tmp_path) == before


def test_resume_never_refuses_a_directory_with_checkpoints(tmp_path: Path) -> None:
    run_training(tiny_config(tmp_path, "trainer.max_steps=2"), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="resume=never"):
        run_training(tiny_config(tmp_path, "trainer.max_steps=2", "resume=never"), tmp_path)
    assert snapshot(tmp_path) == before


def test_the_micro_batch_size_may_change_on_resume(straight_run: Path, tmp_path: Path) -> None:
    """The global batches are the logical streams' windows, however they are cut into micro-batches."""
    run_training(tiny_config(tmp_path, "trainer.max_steps=6", "trainer.stop_at=3"), tmp_path)
    run_training(tiny_config(tmp_path, "trainer.max_steps=6", "trainer.micro_batch_size=2"), tmp_path)
    expected = losses(straight_run)
    assert losses(tmp_path) == pytest.approx(expected, abs=1e-5)


def test_model_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"model.vocab_size=100 is smaller than the tokenizer's vocabulary \(512"
    ):
        run_training(tiny_config(tmp_path, "model.vocab_size=100"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_wandb_run_id_is_kept_in_the_checkpoint_and_reused_on_resume(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    common = ("trainer.max_steps=4", "logger.wandb.mode=offline")
    run_training(tiny_config(tmp_path, *common, "trainer.stop_at=2"), tmp_path)
    first = ckpt.read_trainer_state(ckpt.unmerged_dir(tmp_path / "checkpoints", 2))["wandb_run_id"]
    assert first
    run_training(tiny_config(tmp_path, *common), tmp_path)
    second = ckpt.read_trainer_state(ckpt.unmerged_dir(tmp_path / "checkpoints", 4))["wandb_run_id"]
    assert second == first
    assert sorted(p.name.split("-")[-1] for p in (tmp_path / "wandb").glob("offline-run-*")) == [first, first]


def test_bf16_autocast_runs_close_to_fp32(straight_run: Path, tmp_path: Path) -> None:
    run_training(tiny_config(tmp_path, "trainer.max_steps=6", "trainer.precision=bf16"), tmp_path)
    bf16, fp32 = losses(tmp_path), losses(straight_run)
    assert bf16 != fp32
    assert all(abs(bf16[step] - fp32[step]) < 0.05 for step in fp32)


def test_activation_checkpointing_recomputes_each_layer_and_trains_identically(
    straight_run: Path, tmp_path: Path
) -> None:
    run_training(
        tiny_config(tmp_path, "trainer.max_steps=6", "trainer.activation_checkpointing=true"), tmp_path
    )
    assert losses(tmp_path) == pytest.approx(losses(straight_run), rel=1e-6)
    forwards = []
    cfg = tiny_config(tmp_path, "trainer.activation_checkpointing=true")
    model, _ = build_training_model(cfg, vocab_size=512)
    model.train().model.layers[0].self_attn.register_forward_hook(lambda *_: forwards.append(1))
    tokens = torch.randint(0, 512, (2, 9))
    model(input_ids=tokens, labels=tokens).loss.backward()
    assert len(forwards) == 2  # the forward, and its recomputation in the backward


def test_resume_from_an_explicit_older_checkpoint_replays_the_same_steps(
    straight_run: Path, tmp_path: Path
) -> None:
    older = ckpt.unmerged_dir(straight_run / "checkpoints", 4)
    run_training(tiny_config(tmp_path, "trainer.max_steps=6", f"resume={older}"), tmp_path)
    replayed = losses(tmp_path)
    assert sorted(replayed) == [5, 6]
    assert replayed == {step: loss for step, loss in losses(straight_run).items() if step > 4}


@pytest.mark.parametrize("choice", ["optimizer=muon", "scheduler=wsd", "scheduler=linear"])
def test_resume_is_exact_with_muon_and_each_schedule(choice: str, tmp_path: Path) -> None:
    common = ("trainer.max_steps=4", "checkpoint.every=2", choice)
    run_training(tiny_config(tmp_path / "straight", *common), tmp_path / "straight")
    run_training(tiny_config(tmp_path / "resumed", *common, "trainer.stop_at=2"), tmp_path / "resumed")
    run_training(tiny_config(tmp_path / "resumed", *common), tmp_path / "resumed")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 4


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_non_finite_step_between_logged_steps_is_skipped_and_stops_the_run_before_the_next_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    """Unlogged steps are not read on the host: the optimizer skips the bad step on the device, and the
    read before the step-4 checkpoint finds it."""
    real_loss = trainer_module.causal_lm_loss
    calls = {"n": 0}

    def loss_that_is_nan_at_step_3_only(model, windows, **kwargs):
        calls["n"] += 1
        loss = real_loss(model, windows, **kwargs)
        return loss * float("nan") if 4 < calls["n"] <= 6 else loss  # 2 micro-batches per step

    monkeypatch.setattr(trainer_module, "causal_lm_loss", loss_that_is_nan_at_step_3_only)
    cfg = tiny_config(
        tmp_path,
        "trainer.max_steps=6",
        "checkpoint.every=2",
        "trainer.log_every=100",
        f"optimizer={optimizer}",
    )
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss=nan.*last good checkpoint: .*step_00000002"):
        run_training(cfg, tmp_path)
    assert calls["n"] == 8  # step 4 ran (from the weights step 3 left untouched), then its save read step 3
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_00000002"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.precision=bf16"], torch.bfloat16),
        (["trainer.precision=bf16", "pc.bf16_products=false"], None),
        (["trainer.precision=fp32"], None),
        (["trainer.precision=fp32", "pc.bf16_products=true"], torch.bfloat16),
        (["trainer.precision=bf16", "pc.transform_every=forward"], None),
    ],
)
def test_the_pc_step_runs_bf16_products_where_the_forward_is_bf16_unless_told(overrides, expected) -> None:
    """``pc.bf16_products`` left unset follows the forward's dtype; W_eff is kept in that dtype."""
    cfg = compose_config(*TINY_OVERRIDES, "distributed=single", *overrides)
    accelerator = build_accelerator(cfg)
    model, _ = build_training_model(cfg, 512)
    step = build_pc_step(cfg, model, accelerator)
    assert step.product_dtype == expected
    bf16_forward = "trainer.precision=bf16" in overrides
    assert step.forward_dtype == (torch.bfloat16 if bf16_forward else None)
