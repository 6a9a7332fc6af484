"""The per-matrix elementwise rule written for torch.compile against Muon's eager multi-tensor one:
run eagerly here, compiled in a fresh interpreter (``compiled_muon_checks.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optim.compiled_muon_checks import random_matrices
from torch import Tensor

from pcpretrain.optim.compiled_elementwise import (
    per_matrix_apply_updates,
    per_matrix_momentum_directions,
)
from pcpretrain.optim.muon import apply_muon_updates, momentum_directions

SHAPE, COUNT, MOMENTUM = (5, 7), 4, 0.9


def flags(flag: float | None) -> Tensor | None:
    return None if flag is None else torch.tensor(flag, dtype=torch.float64)


@pytest.mark.parametrize("rows", [(0, COUNT), (1, 3), (3, 4), (2, 2)])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("flag", [None, 0.0, 1.0])
def test_momentum_directions_follow_the_eager_rule(
    rows: tuple[int, int], nesterov: bool, flag: float | None
) -> None:
    grads, bufs = random_matrices(0, COUNT, SHAPE), random_matrices(1, COUNT, SHAPE)
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


@pytest.mark.parametrize("flag", [None, 1.0])
def test_directions_come_in_the_dtype_asked_for(flag: float | None) -> None:
    """Compiled Muon asks for Newton–Schulz's dtype: the same directions, rounded once, and the
    buffers still in their own dtype."""
    grads, bufs = random_matrices(0, COUNT, SHAPE), random_matrices(1, COUNT, SHAPE)
    eager_bufs, fused_bufs = [b.clone() for b in bufs], [b.clone() for b in bufs]
    eager = momentum_directions(grads, eager_bufs, MOMENTUM, True, flags(flag), (1, 3))
    fused = per_matrix_momentum_directions(
        grads, fused_bufs, MOMENTUM, True, flags(flag), (1, 3), dtype=torch.float32
    )
    assert fused.dtype == torch.float32 and fused_bufs[0].dtype == torch.float64
    torch.testing.assert_close(fused, eager.float())
    for eager_buf, fused_buf in zip(eager_bufs, fused_bufs, strict=True):
        torch.testing.assert_close(fused_buf, eager_buf, rtol=0, atol=1e-12)


@pytest.mark.parametrize("flag", [None, 0.0, 1.0])
def test_apply_updates_follows_the_eager_rule(flag: float | None) -> None:
    params = random_matrices(2, COUNT, SHAPE)
    updates = torch.stack(random_matrices(3, COUNT, SHAPE)).to(torch.float32)
    eager, fused = [p.clone() for p in params], [p.clone() for p in params]
    apply_muon_updates(eager, updates, 0.01, 0.3, flags(flag))
    per_matrix_apply_updates(fused, updates, 0.01, 0.3, flags(flag))
    for e, f, before in zip(eager, fused, params, strict=True):
        torch.testing.assert_close(f, e, rtol=0, atol=1e-12)
        assert not torch.equal(f, before) if flag != 1.0 else torch.equal(f, before)


CHECKS = Path(__file__).with_name("compiled_muon_checks.py")


@pytest.mark.parametrize(
    "check",
    [
        "compiled_muon_equals_eager_muon_and_a_changing_lr_does_not_recompile",
        "compiled_muon_in_bfloat16_stays_within_its_rounding_of_eager_muon",
        "a_rank_slice_of_directions_follows_the_eager_rule",
        "past_the_recompile_limit_a_batch_runs_eagerly_and_still_right",
        "a_kernel_that_cannot_compile_stops_with_the_setting_to_change_and_changes_nothing",
    ],
)
def test_compiled_work_in_a_fresh_process(check: str) -> None:
    """The compiled functions themselves, in an interpreter of their own (see that file's docstring)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(CHECKS), check], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"ok {check}" in result.stdout
