"""Validation of a composed config: values that are well-typed but out of range, and override keys the
schema lacks, each rejected with a message naming the key and what is allowed, before any work starts.

Hydra checks key names and types against the schemas in :mod:`pcpretrain.config`; these checks add
ranges, combinations and the world size the run will have.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from pcpretrain.choices import (
    NS_COEFFICIENT_SETS,
    NS_DTYPES,
    NS_METHODS,
    PC_DEGREES,
    TOKENIZER_KINDS,
    looks_like_hub_id,
)
from pcpretrain.config import (
    CHECKPOINT_FORMS,
    DATA_SOURCES,
    DEVICES,
    ENGINES,
    LR_ADJUSTMENTS,
    MIXTURE_SOURCES,
    OPTIMIZERS,
    PC_TRANSFORM_EVERY,
    PRECISIONS,
    SCHEDULERS,
    STOP_SIGNALS,
    VERIFY_MODES,
    WANDB_MODES,
    ZERO_ENGINES,
    DataConfig,
    MixtureSourceConfig,
    TrainConfig,
    TrainerConfig,
)
from pcpretrain.errors import ConfigError


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _positive(key: str, value: float | int, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value!r} is not allowed; it must be {bound}")


def parse_step_range(text: str) -> tuple[int, int]:
    """``"A-B"`` (steps A to B inclusive, 1-based) or ``"A"`` as ``(A, B)``; the one parser of
    ``trainer.profile``, shared by validation and the profiler callback."""
    first, sep, last = str(text).strip().partition("-")
    try:
        steps = (int(first), int(last) if sep else int(first))
    except ValueError:
        raise ValueError(f"{text!r} is not a step range 'A-B' or 'A'") from None
    if not 1 <= steps[0] <= steps[1]:
        raise ValueError(f"{text!r} is not a step range 'A-B' or 'A' with 1 <= A <= B")
    return steps


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Reject out-of-range values with a message naming the key and the allowed values."""
    _choice("pc.degree", cfg.pc.degree, PC_DEGREES)
    _positive("pc.power_iters", cfg.pc.power_iters)
    _choice("pc.transform_every", cfg.pc.transform_every, PC_TRANSFORM_EVERY)
    if cfg.pc.bf16_products and cfg.pc.transform_every != "step":
        raise ConfigError(
            "pc.bf16_products=true applies to the per-step transform only; set pc.transform_every=step "
            "or pc.bf16_products=false"
        )
    if cfg.pc.degree and not cfg.pc.targets:
        raise ConfigError(
            "pc.targets is empty; give module-name patterns such as '*.mlp.up_proj' or set pc.degree=0"
        )
    _choice("optimizer", cfg.optimizer.name, OPTIMIZERS)
    _positive("optimizer.lr", cfg.optimizer.lr)
    _positive("optimizer.eps", cfg.optimizer.eps)
    _positive("optimizer.weight_decay", cfg.optimizer.weight_decay, allow_zero=True)
    if len(cfg.optimizer.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optimizer.betas):
        raise ConfigError(f"optimizer.betas={list(cfg.optimizer.betas)} must be two numbers in [0, 1)")
    if cfg.optimizer.adamw_lr is not None:
        _positive("optimizer.adamw_lr", cfg.optimizer.adamw_lr)
    _choice("optimizer.ns_coefficients", cfg.optimizer.ns_coefficients, NS_COEFFICIENT_SETS)
    _choice("optimizer.ns_dtype", cfg.optimizer.ns_dtype, NS_DTYPES)
    _choice("optimizer.ns_method", cfg.optimizer.ns_method, NS_METHODS)
    _choice("optimizer.lr_adjust", cfg.optimizer.lr_adjust, LR_ADJUSTMENTS)
    _positive("optimizer.ns_steps", cfg.optimizer.ns_steps)
    if cfg.optimizer.compile and cfg.optimizer.name != "muon":
        raise ConfigError(
            f"optimizer.compile=true applies to muon only; optimizer={cfg.optimizer.name} already runs "
            "torch's fused kernel: set optimizer.compile=false"
        )
    if not 0.0 <= cfg.optimizer.momentum < 1.0:
        raise ConfigError(f"optimizer.momentum={cfg.optimizer.momentum} must lie in [0, 1)")
    for category in fields(cfg.optimizer.categories):
        settings = getattr(cfg.optimizer.categories, category.name)
        _positive(f"optimizer.categories.{category.name}.lr_mult", settings.lr_mult, allow_zero=True)
        if settings.weight_decay is not None:
            _positive(
                f"optimizer.categories.{category.name}.weight_decay", settings.weight_decay, allow_zero=True
            )
    _choice("scheduler", cfg.scheduler.name, SCHEDULERS)
    _positive("scheduler.warmup_steps", cfg.scheduler.warmup_steps, allow_zero=True)
    if not 0.0 <= cfg.scheduler.end_ratio <= 1.0:
        raise ConfigError(f"scheduler.end_ratio={cfg.scheduler.end_ratio} must lie in [0, 1]")
    if not 0.0 < cfg.scheduler.decay_fraction <= 1.0:
        raise ConfigError(f"scheduler.decay_fraction={cfg.scheduler.decay_fraction} must lie in (0, 1]")
    _validate_model(cfg)
    _validate_data(cfg)
    _validate_trainer(cfg, world_size)
    _validate_distributed(cfg, world_size)
    _validate_checkpoint(cfg)
    _choice("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    _positive("spectral.every", cfg.spectral.every, allow_zero=True)
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).exists():
        raise ConfigError(
            f"resume={cfg.resume!r}: no such checkpoint directory; use auto, never or a checkpoint path"
        )


def _validate_model(cfg: TrainConfig) -> None:
    m = cfg.model
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "max_seq_len"):
        _positive(f"model.{key}", getattr(m, key))
    if m.vocab_size is not None:
        _positive("model.vocab_size", m.vocab_size)
    if m.hidden_size % m.num_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} must be divisible by model.num_heads={m.num_heads}"
        )
    if m.num_kv_heads is not None and (m.num_kv_heads <= 0 or m.num_heads % m.num_kv_heads):
        raise ConfigError(f"model.num_kv_heads={m.num_kv_heads} must divide model.num_heads={m.num_heads}")


def _validate_data(cfg: TrainConfig) -> None:
    d = cfg.data
    _choice("data.source", d.source, DATA_SOURCES)
    _positive("data.seq_len", d.seq_len)
    _positive("data.shuffle_buffer", d.shuffle_buffer)
    _positive("data.num_workers", d.num_workers, allow_zero=True)
    _positive("data.streams", d.streams)
    _positive("data.validation_documents", d.validation_documents, allow_zero=True)
    if d.seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    _require_source_keys("data", d.source, d)
    if d.source == "mixture":
        if not d.mixture:
            raise ConfigError("data.mixture is empty; data.source=mixture needs a list of weighted sources")
        for index, part in enumerate(d.mixture):
            _choice(f"data.mixture[{index}].source", part.source, MIXTURE_SOURCES)
            _positive(f"data.mixture[{index}].weight", part.weight, allow_zero=True)
            _require_source_keys(f"data.mixture[{index}]", part.source, part)
        if sum(part.weight for part in d.mixture) <= 0:
            raise ConfigError("data.mixture weights sum to 0; give at least one source a positive weight")
    held_out = (
        d.validation_files or d.hub.validation_split or d.validation_shards_dir or d.validation_documents
    )
    if d.source == "sample" and not 0.0 < d.validation_fraction < 1.0:
        raise ConfigError(f"data.validation_fraction={d.validation_fraction} must lie in (0, 1)")
    if d.source != "sample" and not held_out:
        raise ConfigError(
            f"data.source={d.source} has no held-out set; set data.validation_files, "
            "data.hub.validation_split, data.validation_shards_dir or data.validation_documents "
            "(the first N documents of the source)"
        )
    if d.tokenizer.vocab_size is not None and (d.tokenizer.path or d.source == "shards"):
        given = f"data.tokenizer.path={d.tokenizer.path}" if d.tokenizer.path else "the shards' tokenizer"
        raise ConfigError(
            f"data.tokenizer.vocab_size={d.tokenizer.vocab_size} sizes a tokenizer trained here, but "
            f"{given} is used as it is; drop data.tokenizer.vocab_size (its size is the file's), or drop "
            "data.tokenizer.path to train one of that size"
        )
    _choice("data.tokenizer.kind", d.tokenizer.kind, TOKENIZER_KINDS)
    if d.tokenizer.path is None:
        if d.tokenizer.vocab_size is not None:
            _positive("data.tokenizer.vocab_size", d.tokenizer.vocab_size)
        _positive("data.tokenizer.train_documents", d.tokenizer.train_documents)
    elif not Path(d.tokenizer.path).expanduser().exists() and not looks_like_hub_id(d.tokenizer.path):
        raise ConfigError(
            f"data.tokenizer.path={d.tokenizer.path!r}: no such file or directory, nor a Hub id org/name "
            "(expected a SentencePiece .model, a tokenizer.json, a directory holding either, or a Hub id)"
        )


def _require_source_keys(prefix: str, source: str, node: DataConfig | MixtureSourceConfig) -> None:
    """The key each source kind reads must be set."""
    required = {
        "files": ("train_files", node.train_files),
        "hub": ("hub.path", node.hub.path),
        "shards": ("shards_dir", node.shards_dir),
    }
    if source in required and not required[source][1]:
        raise ConfigError(f"{prefix}.{required[source][0]} is not set; {prefix}.source={source} needs it")


def _validate_trainer(cfg: TrainConfig, world_size: int) -> None:
    t = cfg.trainer
    _positive("trainer.max_steps", t.max_steps)
    if t.stop_at is not None and not 1 <= t.stop_at <= t.max_steps:
        raise ConfigError(f"trainer.stop_at={t.stop_at} must lie in [1, trainer.max_steps={t.max_steps}]")
    _positive("trainer.batch_size", t.batch_size)
    _positive("trainer.micro_batch_size", t.micro_batch_size)
    if t.batch_size % (t.micro_batch_size * world_size):
        raise ConfigError(
            f"trainer.batch_size={t.batch_size} must be a multiple of trainer.micro_batch_size="
            f"{t.micro_batch_size} x {world_size} process(es)"
        )
    _positive("trainer.grad_clip", t.grad_clip, allow_zero=True)
    _choice("trainer.precision", t.precision, PRECISIONS)
    _choice("trainer.device", t.device, DEVICES)
    _positive("trainer.loss_chunk_tokens", t.loss_chunk_tokens, allow_zero=True)
    _positive("trainer.eval_every", t.eval_every, allow_zero=True)
    if t.eval_batches is not None:
        _positive("trainer.eval_batches", t.eval_batches)
    _positive("trainer.log_every", t.log_every)
    _validate_profile(t, world_size)


def _validate_profile(t: TrainerConfig, world_size: int) -> None:
    if t.profile is None:
        return
    try:
        first, last = parse_step_range(t.profile)
    except ValueError:
        raise ConfigError(
            f"trainer.profile={t.profile!r} is not allowed; give optimizer steps as 'A-B' (A to B "
            "inclusive, 1-based as in metrics.jsonl, 1 <= A <= B), a single step 'A', or null (off)"
        ) from None
    if last > t.max_steps:
        raise ConfigError(
            f"trainer.profile={t.profile!r} ends after trainer.max_steps={t.max_steps}; "
            f"choose steps in [1, {t.max_steps}]"
        )
    if not t.profile_ranks or not all(0 <= rank < world_size for rank in t.profile_ranks):
        raise ConfigError(
            f"trainer.profile_ranks={list(t.profile_ranks)} is not allowed; give one or more process "
            f"ranks in [0, {world_size - 1}] ({world_size} process(es))"
        )


def _validate_distributed(cfg: TrainConfig, world_size: int) -> None:
    d = cfg.distributed
    _choice("distributed", d.engine, ENGINES)
    _positive("distributed.timeout_s", d.timeout_s)
    for name in d.stop_signals:
        _choice("distributed.stop_signals", name, STOP_SIGNALS)
    if d.engine == "single" and world_size > 1:
        raise ConfigError(
            f"distributed=single but the launcher started {world_size} processes; "
            "choose distributed=ddp, fsdp, zero1, zero2 or zero3, or launch one process"
        )
    if d.engine in ZERO_ENGINES and cfg.optimizer.name == "muon":
        raise ConfigError(
            f"optimizer=muon is not supported with distributed={d.engine}: ZeRO flattens parameters "
            "into partitions, so Newton-Schulz would not see whole matrices; use distributed=ddp or "
            "fsdp for Muon (AdamW works under every engine)"
        )


def _validate_checkpoint(cfg: TrainConfig) -> None:
    c = cfg.checkpoint
    _positive("checkpoint.every", c.every, allow_zero=True)
    _positive("checkpoint.keep_last", c.keep_last)
    for key in ("forms", "final_forms"):
        for form in getattr(c, key):
            _choice(f"checkpoint.{key}", form, CHECKPOINT_FORMS)
    _choice("checkpoint.verify", c.verify, VERIFY_MODES)


def check_override_keys(overrides: list[str], groups: set[str]) -> None:
    """Reject ``key=value`` overrides whose key the schema lacks, suggesting the closest valid key.

    Hydra rejects them too, but only after composing and without listing what is valid; group
    choices (``model=tiny``, ``~experiment``) and ``hydra.*`` settings are left to Hydra.
    """
    for override in overrides:
        key, sep, _ = override.lstrip("+~").partition("=")
        if not sep or key in groups or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        node: Any = TrainConfig
        walked: list[str] = []
        for part in key.split("."):
            names = [f.name for f in fields(node)] if is_dataclass(node) else []
            if not names:
                raise ConfigError(
                    f"unknown key {key!r}: {'.'.join(walked)} is a single value, not a group of keys"
                )
            if part not in names:
                where = ".".join(walked) or "the top level"
                close = difflib.get_close_matches(part, names, n=1)
                hint = f"; did you mean {'.'.join([*walked, close[0]])}?" if close else ""
                raise ConfigError(f"unknown key {key!r}: {where} has {', '.join(names)}{hint}")
            walked.append(part)
            node = typing.get_type_hints(node)[part]
