"""Which models ``pcpretrain spectra`` reads: checkpoints found from the paths given, and a reader for
Hugging Face model directories (merged exports, any Llama) beside the unmerged checkpoints' readers.

A path is a checkpoint, a model directory, a run directory or a directory of runs; a run contributes
each step once, in its unmerged form where it has one, since only that form knows the power-iteration
estimate's error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from pcpretrain import checkpoint as ckpt
from pcpretrain.analysis.run_files import CHECKPOINTS_DIR, find_runs
from pcpretrain.checkpoint_weights import SAFETENSORS_FILE, CheckpointWeights, SafetensorsWeights

HF_CONFIG = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
UNMERGED, MERGED = "unmerged", "merged"


@dataclass(frozen=True)
class Checkpoint:
    """One model to analyse: its directory, its form and the label of the run it belongs to."""

    path: Path
    form: str
    run: str


def is_unmerged_checkpoint(path: Path) -> bool:
    """A directory ``pcpretrain train`` saved to resume from (whichever engine wrote its weights)."""
    return (path / ckpt.TRAINER_STATE).is_file()


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory with safetensors weights (a merged export or any Llama)."""
    weights = (path / SAFETENSORS_FILE).is_file() or (path / SAFETENSORS_INDEX).is_file()
    return (path / HF_CONFIG).is_file() and weights


def find_checkpoints(paths: Sequence[Path]) -> list[Checkpoint]:
    """Every checkpoint named by ``paths``, each once, in the order given and, within a run, by step.

    A path is a checkpoint (unmerged or merged), a model directory, a run directory (its
    ``checkpoints/``, the unmerged form of a step preferred) or a directory of runs. A path that
    yields nothing is an error naming it.
    """
    if not paths:
        raise ValueError("no paths given; name checkpoints, model directories, run or sweep directories")
    found: dict[Path, Path] = {}
    for path in map(Path, paths):
        for checkpoint in _checkpoints_in(path):
            found.setdefault(checkpoint.resolve(), checkpoint)
    run_dirs = {path: _run_dir(path) for path in found.values()}
    labels = _run_labels(list(dict.fromkeys(run_dirs.values())))
    return [Checkpoint(path, _form(path), labels[run_dirs[path]]) for path in found.values()]


def _checkpoints_in(path: Path) -> list[Path]:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if is_unmerged_checkpoint(path) or is_model_dir(path):
        return [path]
    try:
        runs = [path] if (path / CHECKPOINTS_DIR).is_dir() else find_runs([path])
    except ValueError:
        runs = []
    found = [checkpoint for run in runs for checkpoint in run_checkpoints(run)]
    if not found:
        raise ValueError(
            f"{path}: no checkpoints found; expected an unmerged checkpoint (step_XXXXXXXX/), a merged or "
            f"Hugging Face model directory ({HF_CONFIG} and safetensors), a run directory with "
            f"{CHECKPOINTS_DIR}/ or a directory of runs"
        )
    return found


def run_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoints in step order: the unmerged form of each step, the merged one where it is alone."""
    root = run_dir / CHECKPOINTS_DIR
    chosen = {path.name: path for path in ckpt.list_unmerged(root)}
    if root.is_dir():
        for merged in root.glob(f"step_*{ckpt.MERGED_SUFFIX}"):
            if merged.is_dir():
                chosen.setdefault(merged.name.removesuffix(ckpt.MERGED_SUFFIX), merged)
    return [chosen[name] for name in sorted(chosen)]


def _form(path: Path) -> str:
    return UNMERGED if is_unmerged_checkpoint(path) else MERGED


def _run_dir(checkpoint: Path) -> Path:
    """The run a checkpoint came from; a directory outside any run stands for itself."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS_DIR else checkpoint


def _run_labels(run_dirs: Sequence[Path]) -> dict[Path, str]:
    """Run directory names, with the parent's name prefixed where two runs share one."""
    names = [run.name for run in run_dirs]
    return {
        run: f"{run.parent.name}/{run.name}" if names.count(run.name) > 1 else run.name for run in run_dirs
    }


class ModelDirWeights(CheckpointWeights):
    """The tensors of a Hugging Face model directory: one ``model.safetensors`` or the shards its index
    names, each file read only for the tensors asked of it."""

    def __init__(self, directory: Path) -> None:
        index = directory / SAFETENSORS_INDEX
        if index.is_file():
            self.file_of: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        else:
            names = SafetensorsWeights(directory / SAFETENSORS_FILE).names()
            self.file_of = dict.fromkeys(names, SAFETENSORS_FILE)
        files = sorted(set(self.file_of.values()))
        self.files = {file: SafetensorsWeights(directory / file) for file in files}

    def names(self) -> list[str]:
        return list(self.file_of)

    def load(self, names: Sequence[str]) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {}
        for file, reader in self.files.items():
            wanted = [name for name in names if self.file_of[name] == file]
            if wanted:
                tensors.update(reader.load(wanted))
        return tensors
