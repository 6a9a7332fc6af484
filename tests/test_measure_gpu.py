"""The GPU measurement script picks measurements by name and names the ones it does not know."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import REPO_ROOT


def test_measure_gpu_runs_only_the_named_measurements(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "measure_gpu.sh"), str(tmp_path / "out"), "no_such_one"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "unknown measurement no_such_one" in result.stderr
    assert "==" not in result.stdout  # nothing was run
    assert (tmp_path / "out" / "device.txt").exists()
