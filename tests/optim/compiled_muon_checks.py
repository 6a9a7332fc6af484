"""Checks of Muon's compiled elementwise work, run by ``test_compiled_elementwise.py`` in a fresh
interpreter: ``python tests/optim/compiled_muon_checks.py [check ...]`` prints ``ok <check>`` for each.

torch.compile leaves compile threads and a process pool behind in the process that compiles. A test
process that later forks (the 2-process tests fork their ranks) would hand its children a pool they
cannot use, and they would hang; so the test processes themselves never compile.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from pcpretrain.optim import compiled_elementwise
from pcpretrain.optim.muon import NS_DTYPES, Muon, apply_muon_updates, momentum_directions


def compile_count() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def random_matrices(seed: int, count: int, shape: tuple[int, int] = (5, 7)) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(count)]


def compiled_muon_equals_eager_muon_and_a_changing_lr_does_not_recompile() -> None:
    """Float64 (so only the fused rounding differs), two shape batches, a skipped step with NaN
    gradients, and the learning rate changing every step as a schedule changes it; no graph breaks."""
    NS_DTYPES["float64"] = torch.float64
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
    # Every graph is compiled in the first two steps: the second learning rate makes the floats symbolic.
    assert compiled_after[5] == compiled_after[1] > 0, compiled_after
    assert not torch._dynamo.utils.counters["graph_break"]  # each call is one whole graph


def compiled_muon_in_bfloat16_stays_within_its_rounding_of_eager_muon() -> None:
    """The default on GPUs: float32 parameters, bf16 Newton–Schulz. The compiled kernel rounds the
    directions to bf16 before normalising (eager Muon rounds once, after), so the updates agree to
    bf16 rounding, not bit for bit."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(48, 32), (48, 32), (24, 64)]
    start = [torch.randn(shape, generator=gen) for shape in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    finals = []
    for compiled in (False, True):
        params = [nn.Parameter(t.clone()) for t in start]
        opt = Muon([{"params": params, "use_muon": True}], lr=0.02, compile_elementwise=compiled)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        finals.append(params)
    for eager, fused, before in zip(*finals, start, strict=True):
        moved = (eager - before).norm()
        assert (fused - eager).norm() < 5e-2 * moved, ((fused - eager).norm(), moved)  # seen: 1.3-1.6e-2


def a_rank_slice_of_directions_follows_the_eager_rule() -> None:
    """A data-parallel rank's batch: every buffer steps, only the rows of its slice get a direction
    (the compiled kernel's graph without a direction to write), with and without a skipped step, and in
    a narrower dtype than the gradients', as Muon asks for Newton–Schulz's."""
    before = compile_count()
    cases = (((1, 3), 0.0, None), ((0, 0), None, None), ((2, 4), 1.0, None), ((0, 4), 0.0, torch.float32))
    for rows, flag, dtype in cases:
        grads, bufs = random_matrices(6, 4), random_matrices(7, 4)
        found_inf = None if flag is None else torch.tensor(flag, dtype=torch.float64)
        eager_bufs, compiled_bufs = [b.clone() for b in bufs], [b.clone() for b in bufs]
        expected = momentum_directions(grads, eager_bufs, 0.9, True, found_inf, rows)
        got = compiled_elementwise.compiled_momentum_directions(
            grads, compiled_bufs, 0.9, True, found_inf, rows, dtype=dtype
        )
        assert got.shape == expected.shape == (rows[1] - rows[0], 5, 7)
        assert got.dtype == (dtype or torch.float64)  # the conversion fused into the kernel
        torch.testing.assert_close(got, expected.to(got.dtype), rtol=0, atol=1e-12 if dtype is None else 1e-6)
        for eager_buf, compiled_buf in zip(eager_bufs, compiled_bufs, strict=True):
            torch.testing.assert_close(compiled_buf, eager_buf, rtol=0, atol=1e-12)
    assert compile_count() > before  # compiled, not run eagerly


def past_the_recompile_limit_a_batch_runs_eagerly_and_still_right() -> None:
    """The module's own limit governs (torch's default of 8 would be reached by a model with many
    dtypes and flags), and going past it degrades to the eager run of the same rule instead of failing."""
    compiled_elementwise.RECOMPILE_LIMIT = 1
    torch._dynamo.reset()
    before = compile_count()
    for dtype in (torch.float64, torch.float32):  # a dtype of its own needs a graph of its own
        params = [p.to(dtype) for p in random_matrices(4, 2)]
        updates = torch.stack(random_matrices(5, 2))
        expected = [p.clone() for p in params]
        apply_muon_updates(expected, updates, 0.01, 0.3)
        compiled_elementwise.compiled_apply_updates(params, updates, 0.01, 0.3, None)
        for got, want in zip(params, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)
    assert compile_count() == before + 1, (before, compile_count())


def a_kernel_that_cannot_compile_stops_with_the_setting_to_change_and_changes_nothing() -> None:
    """Compiled Muon is the default on GPUs: a backend that fails (here inductor itself raises) must
    say how to run without it, and leave the state it did not get to update untouched (a silent eager
    fallback would round differently from the other ranks' compiled kernels)."""
    import torch._inductor.compile_fx as inductor

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no working compiler on this machine")

    torch._dynamo.reset()
    inductor.compile_fx = broken  # the inductor backend looks it up at each compilation
    grads, bufs = random_matrices(8, 3), random_matrices(9, 3)
    before = [b.clone() for b in bufs]
    params = random_matrices(10, 3)
    params_before = [p.clone() for p in params]
    calls = (
        lambda: compiled_elementwise.compiled_momentum_directions(grads, bufs, 0.9, True, None, (0, 3)),
        lambda: compiled_elementwise.compiled_apply_updates(params, torch.stack(grads), 0.01, 0.3, None),
    )
    for call, name in zip(calls, ("momentum_direction", "apply_update"), strict=True):
        try:
            call()
        except RuntimeError as error:
            message = str(error)
            assert name in message and "optimizer.compile=false" in message, message
            assert "no working compiler on this machine" in message, message
        else:
            raise AssertionError("a failed compilation went unnoticed")
    assert all(torch.equal(b, was) for b, was in zip(bufs, before, strict=True))
    assert all(torch.equal(p, was) for p, was in zip(params, params_before, strict=True))


CHECKS = {
    check.__name__: check
    for check in (
        compiled_muon_equals_eager_muon_and_a_changing_lr_does_not_recompile,
        compiled_muon_in_bfloat16_stays_within_its_rounding_of_eager_muon,
        a_rank_slice_of_directions_follows_the_eager_rule,
        past_the_recompile_limit_a_batch_runs_eagerly_and_still_right,
        a_kernel_that_cannot_compile_stops_with_the_setting_to_change_and_changes_nothing,
    )
}


if __name__ == "__main__":
    for name in sys.argv[1:] or CHECKS:
        CHECKS[name]()
        print(f"ok {name}", flush=True)
