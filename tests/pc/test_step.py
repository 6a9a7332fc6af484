"""The per-step PC path trains like the per-forward one, and is the default where it is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, compose_config, read_metrics, run_cli

from pcpretrain.pc import ddp_ignored_names
from pcpretrain.train.run import uses_per_step_pc


@pytest.mark.slow
def test_per_step_and_per_forward_transforms_give_the_same_loss_curve(tmp_path: Path) -> None:
    overrides = [*TINY_OVERRIDES, "trainer.max_steps=8", "trainer.micro_batch_size=2"]
    run_cli("train", *overrides, f"run.dir={tmp_path / 'step'}")
    run_cli("train", *overrides, "pc.transform_every=forward", f"run.dir={tmp_path / 'forward'}")
    step, forward = read_metrics(tmp_path / "step"), read_metrics(tmp_path / "forward")
    assert len(step) == len(forward) == 8
    for fast, slow in zip(step, forward, strict=True):
        assert fast["loss"] == pytest.approx(slow["loss"], rel=1e-5)
        assert fast["pc/gamma_mean"] == pytest.approx(slow["pc/gamma_mean"], rel=1e-5)


def test_per_step_path_is_the_default_under_every_engine() -> None:
    for engine in ("single", "ddp", "fsdp", "zero1", "zero2", "zero3"):
        assert uses_per_step_pc(compose_config(f"distributed={engine}"))
        assert not uses_per_step_pc(compose_config(f"distributed={engine}", "pc.transform_every=forward"))
    assert not uses_per_step_pc(compose_config("pc.degree=0"))


def test_ddp_leaves_the_pc_weights_to_the_per_step_backward() -> None:
    import torch

    from pcpretrain import pc
    from pcpretrain.config import ModelConfig
    from pcpretrain.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4), 64)
    pc.apply_pc(model, 2)
    names = ddp_ignored_names(model)
    assert (
        "model.layers.0.mlp.up_proj.weight" in names and "model.layers.0.self_attn.o_proj.pc_gamma" in names
    )
    assert "model.layers.0.self_attn.q_proj.weight" not in names
    assert set(names) <= dict(model.named_parameters()).keys()


@pytest.mark.parametrize("tf32", [True, False])
def test_the_transform_runs_with_the_configured_tf32_setting_and_restores_it(monkeypatch, tf32: bool) -> None:
    import torch

    from pcpretrain import pc
    from pcpretrain.pc import step as pc_step

    seen = []

    def recording(function):
        def call(*args, **kwargs):
            seen.append(torch.backends.cuda.matmul.allow_tf32)
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(pc_step, "effective_weight", recording(pc_step.effective_weight))
    monkeypatch.setattr(pc_step, "effective_weight_vjp", recording(pc_step.effective_weight_vjp))
    model = torch.nn.Sequential(torch.nn.Linear(4, 6))
    pc.apply_pc(model, 2, targets=["0"])
    step = pc.PCStep(model, tf32=tf32)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    try:
        step.begin()
        model(torch.ones(1, 4)).sum().backward()
        step.finish()
        assert torch.backends.cuda.matmul.allow_tf32 is (not tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert seen == [tf32, tf32]
