"""``logger.layer_stats``: each PC layer's norms as the optimizer sees them, read only on logged steps
and at a cost that does not grow with depth; each decoder layer's activation RMS on evaluation batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import read_metrics, tiny_config
from torch import nn
from train.test_step_costs import LogsEvery, kernel_ops, make_trainer, reads_after_warm_up

from pcpretrain.pc import pc_modules
from pcpretrain.train.callbacks.evaluation import evaluate, evaluation_metrics
from pcpretrain.train.callbacks.layer_stats import ActivationRMS, LayerStats, decoder_layers
from pcpretrain.train.run import run_training
from pcpretrain.train.trainer import Trainer

CLIP = 0.05
STATS = ("weight_norm", "grad_norm", "gamma", "gamma_grad")


class Snapshots(LogsEvery):
    """Every step's metrics (with the unclipped ``grad_norm``) and the PC weights and gammas it left."""

    def __init__(self) -> None:
        super().__init__(every=1)
        self.weights: list[dict[str, tuple[float, float]]] = []

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        super().on_step_end(trainer, dict(metrics))
        model = trainer.accelerator.unwrap_model(trainer.model)
        self.weights.append(
            {name: (mod.weight.norm().item(), mod.pc_gamma.item()) for name, mod in pc_modules(model)}
        )


def capture_applied_gradients(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """Each step's gradients of every parameter as ``optimizer.step`` finds them."""
    applied: list[dict[str, torch.Tensor]] = []
    step = trainer.optimizer.step
    model = trainer.accelerator.unwrap_model(trainer.model)

    def capturing_step(*args: Any, **kwargs: Any) -> Any:
        applied.append({name: p.grad.clone() for name, p in model.named_parameters()})
        return step(*args, **kwargs)

    trainer.optimizer.step = capturing_step
    return applied


def test_logged_norms_are_those_of_the_clipped_gradients_the_optimizer_applies() -> None:
    snapshots = Snapshots()
    trainer = make_trainer(2, "pc.degree=4", callbacks=[LayerStats(log_every=2), snapshots])
    trainer.grad_clip, trainer.last_step = CLIP, 2
    applied = capture_applied_gradients(trainer)
    trainer.fit()

    unlogged, metrics = snapshots.records
    assert not any(key.startswith("layers/") for key in unlogged)
    weights, grads = snapshots.weights[1], applied[1]
    names = [name for name, _ in pc_modules(trainer.accelerator.unwrap_model(trainer.model))]
    logged = {key: value for key, value in metrics.items() if key.startswith("layers/")}
    assert logged.keys() == {f"layers/{name}/{stat}" for name in names for stat in STATS}
    assert metrics["grad_norm"] > 2 * CLIP  # clipping was active
    clipped_total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    assert clipped_total.item() == pytest.approx(CLIP, rel=1e-4)
    for name in names:
        weight_norm, gamma = weights[name]
        assert logged[f"layers/{name}/weight_norm"] == pytest.approx(weight_norm, rel=1e-6)
        assert logged[f"layers/{name}/gamma"] == pytest.approx(gamma, rel=1e-6)
        grad, grad_gamma = grads[f"{name}.weight"], grads[f"{name}.pc_gamma"]
        assert logged[f"layers/{name}/grad_norm"] == pytest.approx(grad.norm().item(), rel=1e-6)
        assert logged[f"layers/{name}/gamma_grad"] == pytest.approx(grad_gamma.item(), rel=1e-6, abs=1e-12)


def test_only_logged_steps_read_the_device_and_in_one_transfer() -> None:
    trainer = make_trainer(2, "pc.degree=4", callbacks=[LayerStats(log_every=2), LogsEvery(2)])
    reads_per_step, all_calls = reads_after_warm_up(trainer, warm_up_steps=2, last_step=4)
    assert reads_per_step == [0, 0]
    assert all_calls == ["tolist", "tolist"]  # the step's values, then all layer statistics


class ProfiledLayerStats(LayerStats):
    """Counts the operators its hooks run on a logged step."""

    def __init__(self, log_every: int) -> None:
        super().__init__(log_every)
        self.ops: Counter = Counter()

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        self.ops += kernel_ops(lambda: LayerStats.on_before_optimizer_step(self, trainer))

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.ops += kernel_ops(lambda: LayerStats.on_step_end(self, trainer, metrics))


def logged_step_ops(layers: int) -> Counter:
    stats = ProfiledLayerStats(log_every=1)
    trainer = make_trainer(layers, "pc.degree=4", callbacks=[stats])
    trainer.last_step = 1
    trainer.fit()
    return stats.ops


def test_operator_count_does_not_grow_with_depth() -> None:
    shallow, deep = logged_step_ops(2), logged_step_ops(4)
    assert sum(shallow.values()) > 0
    assert deep == shallow


def test_activation_rms_is_that_of_each_decoder_layer_output(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(3, "pc.degree=4")
    trainer.last_step = 2
    trainer.fit()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (2, 17), generator=generator) for _ in range(2)]
    metrics = evaluation_metrics(trainer, batches, [ActivationRMS()])

    model = trainer.accelerator.unwrap_model(trainer.model)
    assert not any(layer._forward_hooks for layer in decoder_layers(model))  # removed again
    assert metrics["val_loss"] == evaluate(trainer, batches)
    monkeypatch.setattr(model.model, "norm", nn.Identity())  # the last hidden state unnormalised
    squares, count = torch.zeros(3, dtype=torch.float64), 0
    with torch.no_grad():
        for windows in batches:
            hidden = model.model(input_ids=windows[:, :-1], output_hidden_states=True).hidden_states[1:]
            squares += torch.stack([h.double().square().sum() for h in hidden])
            count += hidden[0].numel()
    expected = (squares / count).sqrt().tolist()
    assert [metrics[f"layers/{i}/activation_rms"] for i in range(3)] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("enabled", [True, False])
def test_layer_stats_reach_the_metrics_file_only_when_enabled(enabled: bool, tmp_path: Path) -> None:
    overrides = ["trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2", "pc.degree=2"]
    if enabled:
        overrides.append("logger.layer_stats=true")
    cfg = tiny_config(tmp_path, *overrides, "checkpoint.every=0", "checkpoint.final_forms=[]")
    run_training(cfg, tmp_path)
    keys = [{key for key in record if key.startswith("layers/")} for record in read_metrics(tmp_path)]
    if not enabled:
        assert keys == [set(), set()]
        return
    kinds = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.o_proj")  # the default targets
    names = [f"model.layers.{i}.{kind}" for i in range(cfg.model.num_layers) for kind in kinds]
    per_matrix = {f"layers/{name}/{stat}" for name in names for stat in STATS}
    activations = {f"layers/{i}/activation_rms" for i in range(cfg.model.num_layers)}
    assert keys == [per_matrix, per_matrix | activations]  # activations on the evaluation step
