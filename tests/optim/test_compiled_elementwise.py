"""The per-matrix elementwise rule written for torch.compile against Muon's eager multi-tensor one."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pcpretrain.optim import compiled_elementwise
from pcpretrain.optim.compiled_elementwise import (
    per_matrix_apply_updates,
    per_matrix_momentum_directions,
)
from pcpretrain.optim.muon import NS_DTYPES, Muon, apply_muon_updates, momentum_directions

SHAPE, COUNT, MOMENTUM = (5, 7), 4, 0.9


def tensors(seed: int, count: int = COUNT) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(count)]


def flags(flag: float | None) -> Tensor | None:
    return None if flag is None else torch.tensor(flag, dtype=torch.float64)


@pytest.mark.parametrize("rows", [(0, COUNT), (1, 3), (3, 4), (2, 2)])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("flag", [None, 0.0, 1.0])
def test_momentum_directions_follow_the_eager_rule(
    rows: tuple[int, int], nesterov: bool, flag: float | None
) -> None:
    grads, bufs = tensors(0), tensors(1)
    if flag == 1.0:
        grads[1][2, 3] = float("nan")
        grads[2][0, 0] = float("inf")
    eager_bufs, fused_bufs = [b.clone() for b in bufs], [b.clone() for b in bufs]
    eager = momentum_directions(grads, eager_bufs, MOMENTUM, nesterov, flags(flag), rows)
    fused = per_matrix_momentum_directions(grads, fused_bufs, MOMENTUM, nesterov, flags(flag), rows)
    assert fused.shape == eager.shape == (rows[1] - rows[0], *SHAPE)
    torch.testing.assert_close(fused, eager, rtol=0, atol=1e-12)
    for eager_buf, fused_buf, before in zip(eager_bufs, fused_bufs, bufs, strict=True):
        torch.testing.assert_close(fused_buf, eager_buf, rtol=0, atol=1e-12)
        if flag == 1.0:
            assert torch.equal(fused_buf, before)
    assert torch.isfinite(fused).all()


@pytest.mark.parametrize("flag", [None, 0.0, 1.0])
def test_apply_updates_follows_the_eager_rule(flag: float | None) -> None:
    params = tensors(2)
    updates = torch.stack(tensors(3)).to(torch.float32)
    eager, fused = [p.clone() for p in params], [p.clone() for p in params]
    apply_muon_updates(eager, updates, 0.01, 0.3, flags(flag))
    per_matrix_apply_updates(fused, updates, 0.01, 0.3, flags(flag))
    for e, f, before in zip(eager, fused, params, strict=True):
        torch.testing.assert_close(f, e, rtol=0, atol=1e-12)
        assert not torch.equal(f, before) if flag != 1.0 else torch.equal(f, before)


def compile_count() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_muon_equals_eager_muon_and_a_changing_lr_does_not_recompile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Float64 (so only the fused rounding differs), two shape batches, a skipped step with NaN
    gradients, and the learning rate changing every step as a schedule changes it; no graph breaks."""
    monkeypatch.setitem(NS_DTYPES, "float64", torch.float64)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (6, 4), (3, 8), (3, 8)]
    start = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
    models = {}
    for compiled in (False, True):
        params = [nn.Parameter(t.clone()) for t in start]
        opt = Muon(
            [{"params": params, "use_muon": True}],
            lr=0.02,
            weight_decay=0.1,
            ns_dtype="float64",
            compile_elementwise=compiled,
        )
        models[compiled] = (params, opt)
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(6)]
    compiled_after: dict[int, int] = {}
    for step, step_grads in enumerate(grads):
        skip = step == 2
        for params, opt in models.values():
            for p, g in zip(params, step_grads, strict=True):
                p.grad = torch.full_like(g, float("nan")) if skip else g.clone()
            opt.found_inf = torch.tensor(float(skip), dtype=torch.float64)
            opt.param_groups[0]["lr"] = 0.02 / (step + 1)
            opt.step()
        compiled_after[step] = compile_count()
    for eager, fused in zip(models[False][0], models[True][0], strict=True):
        torch.testing.assert_close(fused, eager, rtol=0, atol=1e-10)
        assert torch.isfinite(fused).all()
    assert compiled_after[5] == compiled_after[3] > 0
    assert not torch._dynamo.utils.counters["graph_break"]  # each call is one whole graph


def test_past_the_recompile_limit_a_batch_runs_eagerly_and_still_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The module's own limit governs (torch's default of 8 would be reached by a model with many
    shapes), and going past it degrades to the eager run of the same rule instead of failing."""
    monkeypatch.setattr(compiled_elementwise, "RECOMPILE_LIMIT", 1)
    torch._dynamo.reset()
    before = compile_count()
    for count in (2, 3):  # a list length of its own would need a graph of its own
        params = tensors(4, count)
        updates = torch.stack(tensors(5, count))
        expected = [p.clone() for p in params]
        apply_muon_updates(expected, updates, 0.01, 0.3)
        compiled_elementwise.compiled_apply_updates(params, updates, 0.01, 0.3, None)
        for got, want in zip(params, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert compile_count() == before + 1
