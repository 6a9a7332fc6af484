"""Resuming a run: which checkpoint to continue from, whether it fits this run, and restoring it.

A resumed run must continue exactly where the saved one stopped, so every mismatch that would change
the run (model shape, PC setting, optimizer groups, tokenizer, sharded state on another process count)
is refused with the differences named, and nothing in the run directory is overwritten.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from accelerate import Accelerator

from pcpretrain import checkpoint as ckpt
from pcpretrain.config import ConfigError, TrainConfig, load_yaml
from pcpretrain.data.batches import StreamingBatches
from pcpretrain.data.pipeline import PreparedData
from pcpretrain.data.tokenizer import load_tokenizer
from pcpretrain.errors import CheckpointError, IncompatibleResume
from pcpretrain.train.callbacks.checkpointing import Checkpointing
from pcpretrain.train.engine import SHARDED_ENGINES
from pcpretrain.train.state import TrainState

log = logging.getLogger(__name__)


def locate_resume(cfg: TrainConfig, ckpt_root: Path) -> Path | None:
    """The checkpoint to continue from, or None for a fresh start; never silently overwrites a run."""
    if cfg.resume == "auto":
        return ckpt.find_resumable(ckpt_root)
    if cfg.resume == "never":
        if ckpt.list_unmerged(ckpt_root):
            raise ConfigError(
                f"resume=never but {ckpt_root} already holds checkpoints; use resume=auto to continue "
                "that run or choose a new run.dir (nothing was overwritten)"
            )
        return None
    path = Path(cfg.resume)
    try:
        ckpt.verify_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"resume={cfg.resume}: {exc}") from exc
    later = [p.name for p in ckpt.list_unmerged(ckpt_root) if p.name > path.name]
    if later:
        log.warning(
            "resuming from %s; the later checkpoints %s will be replaced as this run reaches them",
            path,
            later,
        )
    return path


def check_compatible(checkpoint_dir: Path, cfg: TrainConfig, data: PreparedData) -> None:
    """Refuse to resume into a different model, PC setting or tokenizer, naming what differs."""
    saved = load_yaml(checkpoint_dir / ckpt.CONFIG)
    differences = [
        f"model.{f.name}: checkpoint {getattr(saved.model, f.name)!r}, now {getattr(cfg.model, f.name)!r}"
        for f in fields(cfg.model)
        if f.name != "name" and getattr(saved.model, f.name) != getattr(cfg.model, f.name)
    ]
    for key, saved_value, value in (
        ("pc.degree", saved.pc.degree, cfg.pc.degree),
        ("pc.targets", saved.pc.targets, cfg.pc.targets),
        ("optimizer.name", saved.optimizer.name, cfg.optimizer.name),
        ("data.seq_len", saved.data.seq_len, cfg.data.seq_len),
    ):
        if saved_value != value:
            differences.append(f"{key}: checkpoint {saved_value!r}, now {value!r}")
    saved_tokenizer = load_tokenizer(checkpoint_dir)
    if saved_tokenizer.fingerprint != data.tokenizer.fingerprint:
        differences.append(
            f"tokenizer: {data.tokenizer.location} (sha256 {data.tokenizer.fingerprint[:12]}) differs from "
            f"the checkpoint's {saved_tokenizer.location.name} (sha256 {saved_tokenizer.fingerprint[:12]})"
        )
    if differences:
        raise_incompatible(checkpoint_dir, differences)
    if saved.scheduler != cfg.scheduler or saved.trainer.max_steps != cfg.trainer.max_steps:
        log.warning(
            "schedule differs from the checkpoint's (%s, max_steps %d -> %s, %d); following the new one",
            saved.scheduler,
            saved.trainer.max_steps,
            cfg.scheduler,
            cfg.trainer.max_steps,
        )


def check_same_routing(checkpoint_dir: Path, assignment: list[dict[str, Any]]) -> None:
    """Refuse a checkpoint whose optimizer groups hold other parameters or another optimizer (its
    optimizer state would not fit); checkpoints written before this record existed pass."""
    path = checkpoint_dir / ckpt.OPTIMIZER_GROUPS
    if not path.is_file():
        return
    saved_groups = json.loads(path.read_text(encoding="utf-8"))
    saved = {(g["category"], g["optimizer"]): g["names"] for g in saved_groups}
    now = {(g["category"], g["optimizer"]): g["names"] for g in assignment}
    differences = []
    for key in sorted(saved.keys() | now.keys()):
        if saved.get(key) != now.get(key):
            where = "checkpoint only" if key not in now else "now only" if key not in saved else "changed"
            differences.append(f"optimizer group {key[0]} ({key[1]}): {where}")
    if differences:
        raise_incompatible(checkpoint_dir, differences)


def raise_incompatible(checkpoint_dir: Path, differences: list[str]) -> NoReturn:
    raise IncompatibleResume(
        f"cannot resume from {checkpoint_dir}: it was written for a different run\n  "
        + "\n  ".join(differences)
        + "\nUse the checkpoint's settings, or start a new run with another run.dir "
        "(nothing was overwritten)."
    )


def restore(
    accelerator: Accelerator, checkpoint_dir: Path, train_batches: StreamingBatches, engine: str
) -> TrainState:
    """Load model, optimizer, scheduler and RNG via accelerate, then the logical streams' positions.

    The data resumes on any process count that divides ``data.streams``; the model and optimizer state
    of the sharded engines only on the process count that saved them.
    """
    state = TrainState.from_dict(ckpt.read_trainer_state(checkpoint_dir))
    positions = ckpt.read_data_states(checkpoint_dir)
    if engine in SHARDED_ENGINES and len(positions) != accelerator.num_processes:
        raise_incompatible(
            checkpoint_dir,
            [
                f"distributed.engine={engine} saved its state in {len(positions)} per-process parts; resume "
                f"it on {len(positions)} processes, not {accelerator.num_processes} (the data order would "
                "allow it; the sharded model and optimizer state does not)"
            ],
        )
    try:
        train_batches.load_state_dict(positions)
    except ValueError as exc:
        raise_incompatible(checkpoint_dir, [str(exc)])
    try:
        accelerator.load_state(str(checkpoint_dir))
    except (KeyError, ValueError) as exc:  # an optimizer state of another shape, from older checkpoints
        raise_incompatible(checkpoint_dir, [f"its model or optimizer state does not fit: {exc!r}"])
    # accelerate counts micro-batches and applies the optimizer only when the count is a multiple of
    # the accumulation steps; the restored count is the old run's, whose micro-batch size may differ.
    accelerator.step = state.step * accelerator.gradient_accumulation_steps
    return state


def last_good(checkpointing: Checkpointing, resume_from: Path | None) -> str:
    """What a failed run leaves to resume from: its last checkpoint, or the one it resumed from."""
    return f"last good checkpoint: {checkpointing.saved.get('unmerged') or resume_from or 'none written yet'}"
