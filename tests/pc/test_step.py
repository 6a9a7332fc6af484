"""The per-step PC path trains like the per-forward one, and is the default where it is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_OVERRIDES, compose_config, read_metrics, run_cli

from pcpretrain.model import build_model
from pcpretrain.op_costs import OpCosts
from pcpretrain.pc import apply_pc, ddp_ignored_names
from pcpretrain.pc import step as pc_step
from pcpretrain.pc.layers import pc_modules
from pcpretrain.pc.step import PCStep
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


def test_finish_takes_the_weights_in_the_products_dtype_where_it_stacks_them_itself(monkeypatch) -> None:
    """With bf16 products, finish stacks the weights straight in bf16 where the stack is local (one
    pass instead of a float32 stack and its conversion): the same gradients, bitwise, for less traffic
    than the float32 stack it takes where stacking gathers."""

    def finish(stacks_locally: bool) -> tuple[list[torch.Tensor], int]:
        monkeypatch.setattr(pc_step, "stacks_locally", lambda param: stacks_locally)
        cfg = compose_config("model=debug", "model.num_layers=2", "model.intermediate_size=160")
        torch.manual_seed(0)
        model = build_model(cfg.model, 128)
        apply_pc(model, 4)
        step = PCStep(model, forward_dtype=torch.bfloat16, product_dtype=torch.bfloat16, split=False)
        step.update_spectral()
        step.begin()
        generator = torch.Generator().manual_seed(1)
        layers = [layer for _, layer in pc_modules(model)]
        for layer in layers:
            layer.add_step_grad(torch.randn(layer.weight.shape, generator=generator))
        with OpCosts() as costs:
            step.finish()
        return [p.grad for layer in layers for p in (layer.weight, layer.pc_gamma)], costs.other_bytes

    (narrow, narrow_bytes), (wide, wide_bytes) = finish(True), finish(False)
    assert all(torch.equal(a, b) for a, b in zip(narrow, wide, strict=True))
    assert narrow_bytes < wide_bytes
