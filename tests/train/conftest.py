"""One-process reference runs that several multi-process test modules compare against."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ADAMW_PC, MUON_PC, train_split


@pytest.fixture(scope="session")
def single_adamw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process with 2 loader workers, AdamW with PC degree 4 (test_distributed.py, test_fsdp.py)."""
    run_dir = tmp_path_factory.mktemp("single") / "adamw"
    train_split(run_dir, *ADAMW_PC, nproc=1)
    return run_dir


@pytest.fixture(scope="session")
def single_muon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process with 2 loader workers, Muon with PC degree 2 in float32 Newton-Schulz."""
    run_dir = tmp_path_factory.mktemp("single") / "muon"
    train_split(run_dir, *MUON_PC, nproc=1)
    return run_dir
