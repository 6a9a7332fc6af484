"""Unmerged checkpoints: atomic directories, a manifest that marks them complete, safe discovery.

Layout of ``<run.dir>/checkpoints/``::

    step_00000008/            unmerged: accelerate state (model, optimizer, scheduler, RNG) +
                              trainer_state.json, config.yaml, the tokenizer's files, manifest.json
    step_00000008-merged/     merged: a plain Hugging Face Llama directory
    .tmp-step_00000010/       a save in progress (or one a crash interrupted; removed on restart)

A directory is only ever renamed into place once fully written and its manifest (file sizes and
SHA-256 digests) is on disk, so a crash at any moment leaves earlier checkpoints untouched.

The tokenizer's defining files (``Tokenizer.save_files``) lie at the checkpoint root: a SentencePiece
``tokenizer.model`` (as always, so older checkpoints resume), or a Hugging Face ``tokenizer.json`` with
its ``tokenizer_config.json``/``special_tokens_map.json``. ``load_tokenizer(checkpoint_dir)`` reads
either, since a directory with ``tokenizer.model`` is SentencePiece and one with ``tokenizer.json`` is not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from pcpretrain.errors import CheckpointError
from pcpretrain.files import fsync_dir, sha256_file

if TYPE_CHECKING:
    from pcpretrain.data.tokenizer_base import Tokenizer

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
# The SentencePiece tokenizer's file in a checkpoint (a Hugging Face one writes tokenizer.json instead).
TOKENIZER = "tokenizer.model"
# Which parameters each optimizer group holds: resuming checks the optimizer state will fit.
OPTIMIZER_GROUPS = "optimizer_groups.json"
MERGED_SUFFIX = "-merged"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_MERGED_DIR = re.compile(r"^step_(\d{8})-merged$")


def unmerged_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def merged_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}{MERGED_SUFFIX}"


@contextlib.contextmanager
def atomic_directory(final: Path, accelerator: Accelerator | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it into place only if the block succeeds.

    With several processes every rank writes into the same temporary directory and the main
    process renames it after a barrier. An existing ``final`` (e.g. a damaged checkpoint of the
    same step) is moved aside first and deleted only after the new one is in place.
    """
    main = accelerator is None or accelerator.is_main_process
    tmp = final.parent / f".tmp-{final.name}"
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier(accelerator)
    try:
        yield tmp
        _barrier(accelerator)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main:
        _fsync_tree(tmp)
        old = final.parent / f".old-{final.name}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(accelerator)


def save_unmerged(
    accelerator: Accelerator,
    root: Path,
    step: int,
    trainer_state: dict[str, Any],
    data_state: dict[str, Any],
    config_yaml: str,
    tokenizer: Tokenizer,
    verify: str = "checksum",
    assignment_json: str | None = None,
) -> Path:
    """Write everything needed to continue exactly; every rank adds its own data position."""
    final = unmerged_dir(root, step)
    with atomic_directory(final, accelerator) as tmp:
        accelerator.save_state(str(tmp))
        torch.save(data_state, tmp / data_state_name(accelerator.process_index))
        if accelerator.is_main_process:
            (tmp / TRAINER_STATE).write_text(
                json.dumps(trainer_state, indent=2, sort_keys=True), encoding="utf-8"
            )
            (tmp / CONFIG).write_text(config_yaml, encoding="utf-8")
            if assignment_json is not None:
                (tmp / OPTIMIZER_GROUPS).write_text(assignment_json, encoding="utf-8")
            tokenizer.save_files(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(tmp, with_checksums=verify == "checksum")
    return final


def write_manifest(directory: Path, with_checksums: bool) -> None:
    """Record every file's size (and digest); written last, its presence marks the checkpoint complete."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        entry: dict[str, Any] = {"size": path.stat().st_size}
        if with_checksums:
            entry["sha256"] = sha256_file(path)
        files[path.relative_to(directory).as_posix()] = entry
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=2), encoding="utf-8")


def verify_checkpoint(directory: Path) -> None:
    """Raise :class:`CheckpointError` saying what is wrong if ``directory`` is not a complete checkpoint."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory}: {_not_a_checkpoint(directory)}")
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    for name in (TRAINER_STATE, CONFIG):
        if name not in files:
            raise CheckpointError(f"{directory}: manifest lists no {name}; not a pcpretrain checkpoint")
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: damaged checkpoint, file {name} is missing")
        size, expected = path.stat().st_size, entry["size"]
        if size != expected:
            raise CheckpointError(f"{directory}: damaged checkpoint, {name} has {size} bytes, not {expected}")
        if "sha256" in entry and sha256_file(path) != entry["sha256"]:
            raise CheckpointError(f"{directory}: damaged checkpoint, {name} does not match its checksum")


def _not_a_checkpoint(directory: Path) -> str:
    """What ``directory`` (without a manifest) is instead, and which path was probably meant."""
    if (directory / "config.json").is_file():
        return "a merged (Hugging Face) model, already exported; give an unmerged checkpoint (step_XXXXXXXX)"
    steps = [path for path in list_unmerged(directory / "checkpoints") if (path / MANIFEST).is_file()]
    if steps:
        return f"a run directory, not a checkpoint; its newest checkpoint is {steps[-1]}"
    if directory.name.startswith(".tmp-") or _STEP_DIR.match(directory.name):
        return f"incomplete checkpoint (no {MANIFEST}; the save was interrupted)"
    return f"not a checkpoint (no {MANIFEST}); give a checkpoints/step_XXXXXXXX directory of a run"


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / TRAINER_STATE).read_text(encoding="utf-8"))


def data_state_name(rank: int) -> str:
    return f"data_state_{rank}.pt"


def read_data_states(directory: Path) -> list[dict[str, Any]]:
    """The data positions every rank of the run saved (each holds its own logical streams)."""
    paths = sorted(directory.glob("data_state_*.pt"))
    if not paths:
        raise CheckpointError(f"{directory} holds no data position (data_state_*.pt)")
    return [torch.load(path, weights_only=False) for path in paths]


def list_unmerged(root: Path) -> list[Path]:
    """Unmerged checkpoint directories under ``root``, oldest step first."""
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and _STEP_DIR.match(path.name)]
    return sorted(found, key=lambda path: path.name)


def find_resumable(root: Path) -> Path | None:
    """The newest checkpoint that verifies; damaged or incomplete ones are reported and skipped.

    Returns None when there are no checkpoints at all; raises when there are some but none is
    usable, because starting afresh would then overwrite what may still be recoverable.
    """
    candidates = list_unmerged(root)
    problems = []
    for directory in reversed(candidates):
        try:
            verify_checkpoint(directory)
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s", exc)
            problems.append(str(exc))
            continue
        return directory
    if candidates:
        raise CheckpointError(
            "no usable checkpoint in "
            + str(root)
            + ":\n  "
            + "\n  ".join(problems)
            + "\nRepair or remove them, or start a new run with another run.dir."
        )
    return None


def remove_stale_temporaries(root: Path) -> None:
    """Delete half-written saves left by a crash; they were never complete checkpoints."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.is_dir() and (path.name.startswith(".tmp-") or path.name.startswith(".old-")):
            log.warning("removing interrupted save %s", path)
            shutil.rmtree(path, ignore_errors=True)


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints of each form, delete older ones."""
    for pattern in (_STEP_DIR, _MERGED_DIR):
        found = sorted(p for p in root.iterdir() if p.is_dir() and pattern.match(p.name))
        for path in found[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flush every file to disk, and give files the umask's usual mode (some writers use 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(directory)


def _barrier(accelerator: Accelerator | None) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()
