"""Read the model tensors of an unmerged checkpoint, whichever engine wrote it, a few at a time.

``ddp``/``single`` write one ``model.safetensors``; ``fsdp`` writes a sharded
``torch.distributed.checkpoint`` directory (``pytorch_model_fsdp_0/``); ZeRO writes DeepSpeed
partitions (``pytorch_model/`` named by ``latest``). The merged export reads one decoder layer at a
time through this interface, so exporting a large model never holds more than a layer or so in
memory and needs no process group.
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from pcpretrain.errors import CheckpointError

SAFETENSORS_FILE = "model.safetensors"
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
FSDP_KEY_PREFIX = "model."
DEEPSPEED_LATEST = "latest"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class CheckpointWeights(ABC):
    """Names of the model's tensors and loading of any subset of them, as plain CPU tensors."""

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def load(self, names: Sequence[str]) -> dict[str, Tensor]: ...


class SafetensorsWeights(CheckpointWeights):
    """One ``model.safetensors`` file (replicated engines)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> list[str]:
        with safe_open(str(self.path), framework="pt") as handle:
            return list(handle.keys())

    def load(self, names: Sequence[str]) -> dict[str, Tensor]:
        # Fresh copies: tensors handed out at arbitrary byte offsets make BLAS pick other kernels,
        # and the merge would then differ in the last bit from the one computed during training.
        with safe_open(str(self.path), framework="pt") as handle:
            return {name: handle.get_tensor(name).clone() for name in names}


class DistributedCheckpointWeights(CheckpointWeights):
    """A ``torch.distributed.checkpoint`` directory as accelerate writes it for FSDP2 (keys ``model.*``)."""

    def __init__(self, directory: Path) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        self.directory = directory
        self.metadata = FileSystemReader(str(directory)).read_metadata().state_dict_metadata

    def names(self) -> list[str]:
        return [key.removeprefix(FSDP_KEY_PREFIX) for key in self.metadata if key.startswith(FSDP_KEY_PREFIX)]

    def load(self, names: Sequence[str]) -> dict[str, Tensor]:
        import torch.distributed.checkpoint as dcp

        buffers = {}
        for name in names:
            meta = self.metadata[FSDP_KEY_PREFIX + name]
            buffers[FSDP_KEY_PREFIX + name] = torch.empty(meta.size, dtype=meta.properties.dtype)
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(buffers, storage_reader=dcp.FileSystemReader(str(self.directory)), no_dist=True)
        return {key.removeprefix(FSDP_KEY_PREFIX): tensor for key, tensor in buffers.items()}


class DeepSpeedWeights(CheckpointWeights):
    """DeepSpeed ZeRO partitions, reassembled lazily by DeepSpeed's own fp32 reader."""

    def __init__(self, directory: Path) -> None:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag = (directory / DEEPSPEED_LATEST).read_text(encoding="utf-8").strip()
        self.tensors = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag, lazy_mode=True)

    def names(self) -> list[str]:
        return list(self.tensors)

    def load(self, names: Sequence[str]) -> dict[str, Tensor]:
        return {name: self.tensors[name].contiguous().clone() for name in names}


def open_weights(checkpoint_dir: Path) -> CheckpointWeights:
    """The reader for the format found in ``checkpoint_dir``; a clear error when there is none."""
    if (checkpoint_dir / SAFETENSORS_FILE).is_file():
        return SafetensorsWeights(checkpoint_dir / SAFETENSORS_FILE)
    if (checkpoint_dir / FSDP_MODEL_DIR).is_dir():
        return DistributedCheckpointWeights(checkpoint_dir / FSDP_MODEL_DIR)
    if (checkpoint_dir / DEEPSPEED_LATEST).is_file():
        return DeepSpeedWeights(checkpoint_dir)
    raise CheckpointError(
        f"{checkpoint_dir}: no model weights found; expected {SAFETENSORS_FILE} (ddp/single), "
        f"{FSDP_MODEL_DIR}/ (fsdp) or a DeepSpeed '{DEEPSPEED_LATEST}' file (zero1-3)"
    )


def layer_groups(names: Sequence[str]) -> list[list[str]]:
    """Tensor names grouped by decoder layer (each PC layer's weight, gamma, u, v stay together);
    everything outside the layers (embeddings, final norm, head) forms the first group."""
    outside: list[str] = []
    layers: dict[int, list[str]] = {}
    for name in names:
        match = _LAYER.match(name)
        if match:
            layers.setdefault(int(match.group(1)), []).append(name)
        else:
            outside.append(name)
    groups = [outside] if outside else []
    return groups + [layers[index] for index in sorted(layers)]
