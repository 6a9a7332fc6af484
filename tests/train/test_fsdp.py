"""``distributed=fsdp`` on CPU: accelerate's FSDP2 path in 2 gloo processes (torchrun) against one process.

The runs shard with the same plugin, checkpoint and export code as on GPUs (``force_fsdp_state`` in
``pcpretrain/train/engine.py``); the one-process references (``conftest.py``, shared with
``test_distributed.py``) accumulate the same global batch with 2 loader workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    ADAMW_PC,
    MUON_PC,
    SPLIT_STEPS,
    assert_export_matches,
    assert_resume_is_exact,
    assert_same_spectra,
    assert_same_trajectory,
    read_metrics,
    split_overrides,
    train_split,
)

from pcpretrain.checkpoint_weights import FSDP_MODEL_DIR

pytestmark = pytest.mark.slow

FSDP = "distributed=fsdp"


@pytest.fixture(scope="module")
def fsdp_adamw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two processes under fsdp, AdamW with PC degree 4, without interruption."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "adamw"
    train_split(run_dir, *ADAMW_PC, FSDP, nproc=2)
    return run_dir


def test_two_fsdp_processes_match_one_process_and_export_its_weights_adamw_pc(
    single_adamw: Path, fsdp_adamw: Path, tmp_path: Path
) -> None:
    assert_same_trajectory(read_metrics(single_adamw), read_metrics(fsdp_adamw))
    assert_same_spectra(single_adamw, fsdp_adamw)
    last = fsdp_adamw / "checkpoints" / f"step_{SPLIT_STEPS:08d}"
    assert (last / FSDP_MODEL_DIR).is_dir()  # sharded by FSDP2, not replicated by a DDP fallback
    assert_export_matches(fsdp_adamw, single_adamw, tmp_path / "exported")


@pytest.mark.parametrize("reshard", ["true", "false"])
def test_two_fsdp_processes_match_one_process_muon_pc(
    single_muon: Path, reshard: str, tmp_path: Path
) -> None:
    """Also with the layers' parameters kept gathered from forward to backward
    (``distributed.fsdp_reshard_after_forward=false``)."""
    reshard_option = f"distributed.fsdp_reshard_after_forward={reshard}"
    sharded = train_split(tmp_path / "fsdp", *MUON_PC, FSDP, reshard_option, nproc=2)
    assert_same_trajectory(read_metrics(single_muon), sharded)


def test_fsdp_run_stopped_and_resumed_matches_the_uninterrupted_one(fsdp_adamw: Path, tmp_path: Path) -> None:
    overrides = split_overrides(*ADAMW_PC, FSDP)
    assert_resume_is_exact(overrides, 2, tmp_path, nproc=2, straight=fsdp_adamw)
