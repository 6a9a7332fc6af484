"""What one optimizer step costs the host: kernel launches that do not grow with depth, no waiting.

PC and Muon work on stacks of same-shaped matrices, so their operator count must be the same for a
4-layer and an 8-layer model; and a step whose values nobody logs must not read anything back from
the device (each read makes the host wait for the device to finish).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from helpers import compose_config, is_top_level_op, needs_triton, run_under_triton_interpreter
from torch.profiler import ProfilerActivity, profile

from pcpretrain.batched_matmul import symmetric_strips
from pcpretrain.op_costs import OpCosts
from pcpretrain.stop_signals import StopSignals
from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.engine import build_accelerator
from pcpretrain.train.preemption import Preemption
from pcpretrain.train.run import build_training_parts
from pcpretrain.train.state import TrainState
from pcpretrain.train.trainer import Trainer

VOCAB = 256
# Operators that only create views or aliases (no kernel runs).
VIEW_OPS = {
    "aten::alias",
    "aten::as_strided",
    "aten::detach",
    "aten::expand",
    "aten::lift_fresh",
    "aten::reshape",
    "aten::select",
    "aten::slice",
    "aten::squeeze",
    "aten::t",
    "aten::transpose",
    "aten::unbind",
    "aten::unsqueeze",
    "aten::view",
}


class RandomSteps:
    """Two micro-batches of random windows per step."""

    def __init__(self, seq_len: int) -> None:
        self.generator = torch.Generator().manual_seed(0)
        self.seq_len = seq_len

    def next_step(self) -> list[torch.Tensor]:
        return [torch.randint(0, VOCAB, (2, self.seq_len + 1), generator=self.generator) for _ in range(2)]

    def state_dict(self) -> dict[str, Any]:
        return {}


def make_trainer(layers: int, *overrides: str, callbacks: list[Callback] | None = None) -> Trainer:
    cfg = compose_config(
        "model=debug",
        f"model.num_layers={layers}",
        "model.hidden_size=64",
        "model.intermediate_size=128",
        f"model.vocab_size={VOCAB}",
        "data.seq_len=16",
        "trainer.batch_size=4",
        "trainer.micro_batch_size=2",
        "distributed=single",
        *overrides,
    )
    accelerator = build_accelerator(cfg)
    torch.manual_seed(0)
    parts = build_training_parts(cfg, accelerator, VOCAB)
    return Trainer(
        accelerator=accelerator,
        model=parts.model,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        train_batches=RandomSteps(cfg.data.seq_len),
        state=TrainState(),
        max_steps=10,
        pc_step=parts.pc_step,
        callbacks=callbacks or [],
    )


def kernel_ops(run: Callable[[], None]) -> Counter:
    """Top-level operators ``run`` calls, by name, view operators left out."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    names = [
        event.name for event in prof.events() if event.name.startswith("aten::") and is_top_level_op(event)
    ]
    return Counter(name for name in names if name not in VIEW_OPS)


def phase_ops(layers: int, *overrides: str) -> dict[str, Counter]:
    """Operators of the PC phases and of the optimizer step, after one warm-up step."""
    trainer = make_trainer(layers, *overrides)
    trainer.train_step()
    pc_step, model = trainer.pc_step, trainer.model
    counts = {"pc_begin": kernel_ops(pc_step.begin)}
    for windows in trainer.train_batches.next_step():
        model(input_ids=windows[:, :-1], targets=windows[:, 1:], loss_chunk_tokens=64).loss.backward()
    counts["pc_finish"] = kernel_ops(pc_step.finish)
    counts["optimizer"] = kernel_ops(trainer.optimizer.step)
    counts["pc_power_iteration"] = kernel_ops(pc_step.update_spectral)
    return counts


@pytest.mark.parametrize("strips", [1, 4])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_pc_and_optimizer_operator_counts_do_not_grow_with_depth(optimizer: str, strips: int) -> None:
    """Also with the products whose result is symmetric cut into strips (as from 1024 rows)."""
    overrides = ("pc.degree=4", f"optimizer={optimizer}")
    with symmetric_strips(strips, min_rows=16):
        shallow, deep = phase_ops(4, *overrides), phase_ops(8, *overrides)
    for phase, counts in shallow.items():
        assert sum(counts.values()) > 0, phase
        # Anything done per layer adds at least 4 operators (8 layers against 4). The CPU kernels of cat
        # and fill pick an implementation by size, which may add or drop an operator once per shape
        # group (3 groups here).
        growth = sum(deep[phase].values()) - sum(counts.values())
        assert abs(growth) <= 3, (phase, deep[phase] - counts, counts - deep[phase])


@contextmanager
def host_reads() -> Iterator[list[str]]:
    """Record every call that copies a tensor's value to the host."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "cpu", "__float__")}

    def recording(name: str) -> Callable[..., Any]:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return originals[name](self, *args, **kwargs)

        return method

    for name in originals:
        setattr(torch.Tensor, name, recording(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def reads_after_warm_up(trainer: Trainer, warm_up_steps: int, last_step: int) -> tuple[list[int], list[str]]:
    """Device-to-host reads of each step after a warm-up (lazily created state, first log), and of
    the whole continued fit including its logging."""
    trainer.last_step = warm_up_steps
    trainer.fit()
    trainer.last_step = last_step
    reads_per_step: list[int] = []
    original_step = trainer.train_step

    def counted_step() -> None:
        with host_reads() as calls:
            original_step()
        reads_per_step.append(len(calls))

    trainer.train_step = counted_step  # type: ignore[method-assign]
    with host_reads() as all_calls:
        trainer.fit()
    return reads_per_step, all_calls


class LogsEvery(Callback):
    def __init__(self, every: int) -> None:
        self.every = every
        self.records: list[dict[str, Any]] = []

    def needs_step_values(self, trainer: Trainer) -> bool:
        return trainer.state.step % self.every == 0

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.records.append(metrics)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_step_nobody_logs_reads_nothing_from_the_device_and_a_logged_one_reads_once(optimizer: str) -> None:
    logger = LogsEvery(3)
    callbacks = [Preemption(StopSignals(["SIGUSR1"])), logger]
    trainer = make_trainer(2, "pc.degree=4", f"optimizer={optimizer}", callbacks=callbacks)
    reads_per_step, all_calls = reads_after_warm_up(trainer, warm_up_steps=3, last_step=6)
    assert reads_per_step == [0, 0, 0]
    assert all_calls == ["tolist"]  # step 6's values, with the PC statistics, in one transfer
    assert [r["step"] for r in logger.records if "loss" in r] == [3, 6]
    assert "pc/gamma_mean" in logger.records[-1]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_steps_with_symmetric_products_in_strips_train_like_whole_products(optimizer: str) -> None:
    """The PC phases and Newton-Schulz (here in float32) with their symmetric products cut into 4
    strips: the same losses and weights as whole products, up to float32 rounding (which Adam's
    normalisation lifts to ~1e-6 in weights whose gradients are near zero)."""
    overrides = ("pc.degree=4", f"optimizer={optimizer}", "optimizer.ns_dtype=float32")

    def train(strips: int) -> tuple[list[float], dict[str, torch.Tensor], int]:
        logger = LogsEvery(1)
        with symmetric_strips(strips, min_rows=16):
            trainer = make_trainer(2, *overrides, callbacks=[logger])
            trainer.last_step = 4
            with OpCosts() as costs:
                trainer.fit()
        weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        return [record["loss"] for record in logger.records], weights, costs.flops

    (whole_losses, whole, whole_flops), (strips_losses, strips, strips_flops) = train(1), train(4)
    assert len(whole_losses) == 4 and strips_flops < whole_flops  # the strips did run
    assert strips_losses == pytest.approx(whole_losses, rel=1e-6)
    for name, weight in whole.items():
        torch.testing.assert_close(strips[name], weight, rtol=0, atol=1e-5, msg=name)


# Three training steps (PC degree 4 with bf16 products, Muon with bf16 Newton-Schulz, strips cut small)
# with every transposing copy and symmetric sum in the tiled kernels, run by Triton's CPU interpreter,
# then with the eager ops: the same losses and weights, bit for bit.
TILED_TRAINING = """
import sys
sys.path[:0] = ["tests", "tests/train"]
import torch
from pcpretrain import transpose_kernels
from pcpretrain.batched_matmul import symmetric_strips
from test_step_costs import LogsEvery, make_trainer

def train():
    logger = LogsEvery(1)
    with symmetric_strips(4, min_rows=16):
        overrides = ("pc.degree=4", "pc.bf16_products=true", "optimizer=muon")
        trainer = make_trainer(2, *overrides, callbacks=[logger])
        trainer.last_step = 3
        trainer.fit()
    return [r["loss"] for r in logger.records], [p.detach().clone() for p in trainer.model.parameters()]

tiled_losses, tiled_weights = train()
assert {kernel for kernel, _, _ in transpose_kernels._CHECKED} == {"copy", "sum"}, transpose_kernels._CHECKED
transpose_kernels.set_transpose_kernels(False)
eager_losses, eager_weights = train()
assert len(tiled_losses) == 3 and tiled_losses == eager_losses, (tiled_losses, eager_losses)
assert all(torch.equal(a, b) for a, b in zip(tiled_weights, eager_weights, strict=True))
print("tiled training matches")
"""


@needs_triton
def test_training_with_the_tiled_transpose_kernels_equals_the_eager_ops_bit_for_bit() -> None:
    assert "tiled training matches" in run_under_triton_interpreter(TILED_TRAINING)
