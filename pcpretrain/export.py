"""Merged export: fold the PC layers into plain weights and write a Hugging Face Llama directory.

The result loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and needs no
pcpretrain import; the same function serves checkpoints during training and ``pcpretrain export``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig

from pcpretrain import pc
from pcpretrain.config import ConfigError, load_yaml
from pcpretrain.data.tokenizer import Tokenizer
from pcpretrain.model import llama_config
from pcpretrain.train import checkpoint as ckpt
from pcpretrain.train.errors import CheckpointError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def write_merged_model(
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_cfg,
    pc_degree: int,
    tokenizer: Tokenizer,
    out_dir: Path,
) -> Path:
    """Write ``out_dir`` (atomically) as a plain Llama with the PC transform folded into its weights."""
    plain = {_strip_wrappers(name): tensor for name, tensor in state_dict.items()}
    merged = pc.merge_state_dict(plain, pc_degree)
    merged = {name: tensor.detach().to("cpu").contiguous() for name, tensor in merged.items()}
    vocab_size = merged["model.embed_tokens.weight"].shape[0]
    hf_config = llama_config(model_cfg, vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    hf_config.dtype = str(merged["model.embed_tokens.weight"].dtype).removeprefix("torch.")
    with ckpt.atomic_directory(out_dir) as tmp:
        hf_config.save_pretrained(tmp)
        GenerationConfig(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id).save_pretrained(tmp)
        save_file(merged, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
    return out_dir


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Merged form of an unmerged checkpoint; refuses to replace a non-empty ``out_dir`` unless asked."""
    ckpt.verify_checkpoint(checkpoint_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{out_dir} exists and is not empty; choose another directory or pass --overwrite"
        )
    weights = checkpoint_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{checkpoint_dir}: no model.safetensors (was it written by a sharded engine?)")
    try:
        cfg = load_yaml(checkpoint_dir / ckpt.CONFIG)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    tokenizer = Tokenizer.load(checkpoint_dir / ckpt.TOKENIZER)
    # safetensors hands out tensors at arbitrary byte offsets and BLAS picks alignment-dependent
    # kernels; fresh copies make this merge bit-identical to the one written during training.
    state_dict = {name: tensor.clone() for name, tensor in load_file(str(weights)).items()}
    return write_merged_model(
        state_dict, model_cfg=cfg.model, pc_degree=cfg.pc.degree, tokenizer=tokenizer, out_dir=out_dir
    )


def _strip_wrappers(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name
