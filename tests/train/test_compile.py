"""``trainer.compile=true``: regionally compiled decoder layers train like eager ones and export plainly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, cli_env, read_metrics, run_cli
from safetensors import safe_open

from pcpretrain.exit_codes import TRAINING_FAILED

# ``pcpretrain`` in a process whose inductor backend cannot compile, as on a machine without a
# working compiler or Triton.
BROKEN_COMPILER = """
import sys
import torch._inductor.compile_fx as inductor

def broken(*args, **kwargs):
    raise RuntimeError("no working compiler on this machine")

inductor.compile_fx = broken
from pcpretrain.cli import main
sys.exit(main())
"""

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


def test_a_model_that_cannot_compile_stops_with_the_setting_to_change(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_COMPILER, "train", *TINY_OVERRIDES, "trainer.max_steps=2"]
        + ["trainer.compile=true", f"run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(),
    )
    assert result.returncode == TRAINING_FAILED, result.stderr
    message = result.stderr
    assert "torch.compile could not compile the model" in message, message
    assert "no working compiler on this machine" in message, message
    assert "trainer.compile=false" in message and "last good checkpoint: none written yet" in message
    assert "Traceback" not in message, message  # a foreseen error: its message, not dynamo's traceback
    assert not any((run_dir / "checkpoints").glob("step_*"))
