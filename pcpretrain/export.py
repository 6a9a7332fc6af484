"""Merged export: fold the PC layers into plain weights and write a Hugging Face Llama directory.

The result loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and needs no
pcpretrain import; the same function serves checkpoints during training and ``pcpretrain export``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig

from pcpretrain import checkpoint as ckpt
from pcpretrain import pc
from pcpretrain.checkpoint_weights import layer_groups, open_weights
from pcpretrain.compat import plain_parameter_name
from pcpretrain.config import ConfigError, load_yaml
from pcpretrain.data.tokenizer import Tokenizer, load_tokenizer
from pcpretrain.errors import CheckpointError
from pcpretrain.model import llama_config

EMBEDDING = "model.embed_tokens.weight"
# transformers' own default shard size for save_pretrained.
MAX_SHARD_BYTES = 5 * 2**30
# What a merged directory says about the run it came from (transformers ignores the file).
MERGED_INFO = "pcpretrain.json"


def run_info(cfg, step: int) -> dict[str, Any]:
    """The training step and the data settings that held-out evaluation repeats (window length, BOS/EOS)."""
    return {
        "step": step,
        "data": {"seq_len": cfg.data.seq_len, "add_bos": cfg.data.add_bos, "add_eos": cfg.data.add_eos},
    }


def read_merged_info(model_dir: Path) -> dict[str, Any]:
    """The ``pcpretrain.json`` of a merged directory; empty for a model written elsewhere."""
    path = Path(model_dir) / MERGED_INFO
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); re-export the checkpoint") from exc


def write_merged_model(
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_cfg,
    pc_degree: int,
    tokenizer: Tokenizer,
    out_dir: Path,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir`` (atomically) as a plain Llama with the PC transform folded into its weights."""
    return write_merged_groups(
        [state_dict],
        model_cfg=model_cfg,
        pc_degree=pc_degree,
        tokenizer=tokenizer,
        out_dir=out_dir,
        info=info,
    )


def write_merged_groups(
    groups: Iterable[Mapping[str, torch.Tensor]],
    *,
    model_cfg,
    pc_degree: int,
    tokenizer: Tokenizer,
    out_dir: Path,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Merge group by group (each group holds whole PC layers) and write safetensors shards, each closed
    once it reaches ``max_shard_bytes``; one shard is ``model.safetensors``, more get an index, as
    transformers expects. ``pcpretrain.json`` records ``info`` (see :func:`run_info`), the PC degree
    and each PC layer's gamma and sigma, which the merged weights no longer show."""
    with ckpt.atomic_directory(out_dir) as tmp:
        writer = _ShardWriter(tmp, max_shard_bytes)
        pc_layers: dict[str, dict[str, float]] = {}
        for group in groups:
            plain = {plain_parameter_name(name): tensor for name, tensor in group.items()}
            pc_layers.update(pc.pc_layer_scales(plain))
            merged = pc.merge_state_dict(plain, pc_degree)
            writer.add({name: tensor.detach().to("cpu").contiguous() for name, tensor in merged.items()})
        vocab_size, dtype = writer.finish()
        hf_config = llama_config(model_cfg, vocab_size, tokenizer.bos_id, tokenizer.eos_id)
        hf_config.dtype = str(dtype).removeprefix("torch.")
        hf_config.save_pretrained(tmp)
        GenerationConfig(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        summary = {**(info or {}), "pc_degree": pc_degree, "pc_layers": pc_layers}
        (tmp / MERGED_INFO).write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    return out_dir


class _ShardWriter:
    """Collects merged tensors and flushes them to a numbered safetensors file once they reach the size."""

    def __init__(self, directory: Path, max_shard_bytes: int) -> None:
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.files: list[list[str]] = []
        self.total_bytes = 0
        self.embedding: tuple[int, torch.dtype] | None = None

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        if EMBEDDING in tensors:
            self.embedding = (tensors[EMBEDDING].shape[0], tensors[EMBEDDING].dtype)
        self.pending.update(tensors)
        if sum(t.numel() * t.element_size() for t in self.pending.values()) >= self.max_shard_bytes:
            self._flush()

    def finish(self) -> tuple[int, torch.dtype]:
        """Name the files (``model.safetensors`` if only one), index them; return vocab size and dtype."""
        if self.pending or not self.files:
            self._flush()
        if self.embedding is None:
            raise CheckpointError(f"the checkpoint holds no {EMBEDDING}; it is not a Llama model")
        count = len(self.files)
        if count == 1:
            (self.directory / "shard-00001.safetensors").rename(self.directory / "model.safetensors")
            return self.embedding
        weight_map = {}
        for index, names in enumerate(self.files, start=1):
            final = f"model-{index:05d}-of-{count:05d}.safetensors"
            (self.directory / f"shard-{index:05d}.safetensors").rename(self.directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index_file = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
        return self.embedding

    def _flush(self) -> None:
        path = self.directory / f"shard-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.total_bytes += sum(t.numel() * t.element_size() for t in self.pending.values())
        self.files.append(sorted(self.pending))
        self.pending = {}


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Merged form of an unmerged checkpoint of any engine, read one decoder layer at a time on CPU;
    refuses to replace a non-empty ``out_dir`` unless asked."""
    ckpt.verify_checkpoint(checkpoint_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{out_dir} exists and is not empty; choose another directory or pass --overwrite"
        )
    try:
        cfg = load_yaml(checkpoint_dir / ckpt.CONFIG)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    tokenizer = load_tokenizer(checkpoint_dir)
    weights = open_weights(checkpoint_dir)
    groups = (weights.load(names) for names in layer_groups(weights.names()))
    step = int(ckpt.read_trainer_state(checkpoint_dir)["step"])
    return write_merged_groups(
        groups,
        model_cfg=cfg.model,
        pc_degree=cfg.pc.degree,
        tokenizer=tokenizer,
        out_dir=out_dir,
        info=run_info(cfg, step),
    )
