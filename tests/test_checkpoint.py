"""Atomic checkpoint directories, the completeness manifest, discovery that skips damage, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcpretrain import checkpoint as ckpt
from pcpretrain.errors import CheckpointError


def fake_checkpoint(root: Path, step: int, checksums: bool = True) -> Path:
    """A checkpoint directory written through the same atomic path as real saves."""
    with ckpt.atomic_directory(ckpt.unmerged_dir(root, step)) as tmp:
        (tmp / ckpt.TRAINER_STATE).write_text(json.dumps({"step": step}))
        (tmp / ckpt.CONFIG).write_text("seed: 0\n")
        (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 4)
        ckpt.write_manifest(tmp, with_checksums=checksums)
    return ckpt.unmerged_dir(root, step)


def test_a_crash_inside_the_block_leaves_nothing_and_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    old = fake_checkpoint(tmp_path, 4)
    with pytest.raises(RuntimeError), ckpt.atomic_directory(ckpt.unmerged_dir(tmp_path, 8)) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]
    ckpt.verify_checkpoint(old)


def test_rewriting_a_step_replaces_it_whole(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 4)
    (path / "model.safetensors").write_bytes(b"damaged")
    fake_checkpoint(tmp_path, 4)
    ckpt.verify_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / ckpt.MANIFEST).unlink(), "incomplete checkpoint"),
        (lambda d: (d / "model.safetensors").unlink(), "file model.safetensors is missing"),
        (lambda d: (d / "model.safetensors").write_bytes(b"short"), "has 5 bytes, not 1024"),
        (lambda d: (d / "model.safetensors").write_bytes(bytes(1024)), "does not match its checksum"),
        (lambda d: (d / ckpt.MANIFEST).write_text("{not json"), "unreadable manifest"),
    ],
)
def test_damage_is_detected_and_named(tmp_path: Path, damage, message: str) -> None:
    path = fake_checkpoint(tmp_path, 4)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        ckpt.verify_checkpoint(path)


def test_size_only_manifest_still_catches_truncation(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 4, checksums=False)
    ckpt.verify_checkpoint(path)
    (path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not 1024"):
        ckpt.verify_checkpoint(path)


def test_find_resumable_skips_damaged_newest_and_takes_the_previous(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 4)
    newest = fake_checkpoint(tmp_path, 8)
    (newest / "model.safetensors").write_bytes(b"x")
    assert ckpt.find_resumable(tmp_path) == ckpt.unmerged_dir(tmp_path, 4)


def test_find_resumable_refuses_when_every_checkpoint_is_damaged(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 4)
    (path / ckpt.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        ckpt.find_resumable(tmp_path)
    assert path.exists()


def test_find_resumable_is_none_for_a_new_run(tmp_path: Path) -> None:
    assert ckpt.find_resumable(tmp_path / "checkpoints") is None


def test_stale_temporaries_are_removed_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    (tmp_path / ".tmp-step_00000008").mkdir()
    ckpt.remove_stale_temporaries(tmp_path)
    ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_unmerged(tmp_path)] == ["step_00000004", "step_00000006"]
    assert not (tmp_path / ".tmp-step_00000008").exists()


def test_a_directory_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path: Path) -> None:
    run = tmp_path / "run"
    newest = fake_checkpoint(run / "checkpoints", 8)
    merged = ckpt.merged_dir(run / "checkpoints", 8)
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    interrupted = ckpt.unmerged_dir(run / "checkpoints", 12)
    interrupted.mkdir()
    expected = {
        merged: "a merged .*model, already exported",
        run: f"a run directory, not a checkpoint; its newest checkpoint is {newest}",
        interrupted: "incomplete checkpoint .*the save was interrupted",
        tmp_path / "elsewhere": "no such checkpoint directory",
    }
    (tmp_path / "other").mkdir()
    expected[tmp_path / "other"] = "not a checkpoint .*give a checkpoints/step_XXXXXXXX directory"
    for directory, message in expected.items():
        with pytest.raises(CheckpointError, match=message):
            ckpt.verify_checkpoint(directory)
