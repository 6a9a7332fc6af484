"""``trainer.compile=true``: regionally compiled decoder layers train like eager ones and export plainly."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, read_metrics, run_cli
from safetensors import safe_open

pytestmark = pytest.mark.slow


def test_compiled_run_matches_eager_and_writes_plain_names(tmp_path: Path) -> None:
    overrides = [*TINY_OVERRIDES, "trainer.max_steps=2", "trainer.eval_every=2"]
    run_cli("train", *overrides, "trainer.compile=false", f"run.dir={tmp_path / 'eager'}")
    run_cli("train", *overrides, "trainer.compile=true", f"run.dir={tmp_path / 'compiled'}")
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    for a, b in zip(eager, compiled, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert compiled[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=1e-5)
    merged = tmp_path / "compiled" / "checkpoints" / "step_00000002-merged" / "model.safetensors"
    with safe_open(str(merged), framework="pt") as handle:
        names = list(handle.keys())
    assert "model.layers.0.mlp.up_proj.weight" in names
    assert not any("_orig_mod" in name or ".pc_" in name for name in names)
