"""Typed configuration schemas, registered in Hydra's ConfigStore, and their validation.

The dataclasses are the single source of truth for key names and types: Hydra rejects unknown keys
and ill-typed values against them, and :func:`validate` rejects values that are well-typed but
out of range, naming the key and the allowed values, before any work starts.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pcpretrain.choices import (
    DEFAULT_PC_TARGETS,
    LOSS_CHUNK_TOKENS,
    NS_COEFFICIENT_SETS,
    NS_DTYPES,
    NS_METHODS,
    PC_DEGREES,
    TOKENIZER_KINDS,
    looks_like_hub_id,
)
from pcpretrain.errors import ConfigError

PC_TRANSFORM_EVERY = ("step", "forward")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adamw", "muon")
LR_ADJUSTMENTS = ("moonlight", "spectral_mup", "original")
SCHEDULERS = ("cosine", "wsd", "linear")
DATA_SOURCES = ("sample", "files", "hub", "shards", "mixture")
MIXTURE_SOURCES = ("files", "hub", "shards")
CHECKPOINT_FORMS = ("unmerged", "merged")
WANDB_MODES = ("online", "offline", "disabled")
ENGINES = ("single", "ddp", "fsdp", "zero1", "zero2", "zero3")
ZERO_ENGINES = ("zero1", "zero2", "zero3")
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")
VERIFY_MODES = ("checksum", "size")


@dataclass
class RunConfig:
    """Where the run lives. All outputs of one run go to ``dir``."""

    dir: str = "runs/${pcpretrain_run_name:}"


@dataclass
class ModelConfig:
    """Shape of the Llama model. ``vocab_size: null`` takes the tokenizer's size."""

    name: str = "debug"
    vocab_size: int | None = None
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02


@dataclass
class PCConfig:
    """Polynomial preconditioning of selected weight matrices (degree 0 turns it off)."""

    degree: int = 4
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_PC_TARGETS))
    power_iters: int = 10
    # step: W_eff computed once per optimizer step and back-propagated once (fast, default);
    # forward: recomputed in every micro-batch forward (the reference code's way, for comparison).
    transform_every: str = "step"
    # Let the per-step transform's float32 matmuls use TF32 on CUDA: several times faster, ~1e-3 relative
    # error in W_eff, below the bf16 rounding of W_eff in the forward; false: exact float32.
    tf32: bool = True
    # bf16 for the per-step transform's products with the large m x n matrices (the Gram matrix and the
    # polynomial stay float32): faster on GPUs, at bf16-level error in W_eff and dL/dW. null: on where the
    # forward runs in bf16 (bf16 autocast), off elsewhere.
    bf16_products: bool | None = None


@dataclass
class CategoryConfig:
    """Per-category settings: a multiplier on the group's learning rate and its weight decay.

    ``weight_decay: null`` takes ``optimizer.weight_decay``.
    """

    lr_mult: float = 1.0
    weight_decay: float | None = None


@dataclass
class CategoriesConfig:
    """The parameter categories of :mod:`pcpretrain.optim.routing`; vectors and gammas are not decayed."""

    hidden_matrix: CategoryConfig = field(default_factory=CategoryConfig)
    embedding: CategoryConfig = field(default_factory=CategoryConfig)
    lm_head: CategoryConfig = field(default_factory=CategoryConfig)
    vector: CategoryConfig = field(default_factory=lambda: CategoryConfig(weight_decay=0.0))
    pc_gamma: CategoryConfig = field(default_factory=lambda: CategoryConfig(weight_decay=0.0))


@dataclass
class OptimizerConfig:
    """AdamW, or Muon for hidden matrices with AdamW (``betas``, ``eps``, ``adamw_lr``) for the rest."""

    name: str = "adamw"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    adamw_lr: float | None = None
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    ns_coefficients: str = "simple"
    ns_dtype: str = "bfloat16"
    ns_method: str = "gram"
    lr_adjust: str = "moonlight"
    # torch.compile of Muon's momentum step, directions and update (fewer passes over memory); null: on
    # for CUDA, off on CPU (as trainer.compile).
    compile: bool | None = None
    categories: CategoriesConfig = field(default_factory=CategoriesConfig)


@dataclass
class SchedulerConfig:
    """Learning-rate schedule: linear warmup, then ``cosine`` or ``linear`` decay to ``end_ratio`` x peak,
    or ``wsd`` (warmup, stable, then linear decay over the last ``decay_fraction`` of the steps)."""

    name: str = "cosine"
    warmup_steps: int = 10
    end_ratio: float = 0.1
    decay_fraction: float = 0.2


# The size of a tokenizer trained on the configured corpus when ``data.tokenizer.vocab_size`` is null.
TRAINED_VOCAB_SIZE = 4096
HUB_TRAINED_VOCAB_SIZE = 32000


@dataclass
class TokenizerConfig:
    """The tokenizer: ``path`` is a SentencePiece ``.model``, a ``tokenizer.json``, a tokenizer directory
    (``tokenizer.model`` inside is SentencePiece, else ``tokenizer.json``) or a Hub id ``org/name``;
    ``path: null`` uses the token shards' own or trains one of ``kind`` (cached).

    ``kind`` (``sentencepiece``: Llama-2 style; ``bpe``: Llama-3 style byte-level BPE), ``vocab_size``
    and ``train_documents`` describe the tokenizer trained here, so the last two may be set only when
    there is none to load; ``vocab_size: null`` trains :data:`TRAINED_VOCAB_SIZE` ids
    (:data:`HUB_TRAINED_VOCAB_SIZE` for a Hub corpus). ``bos_token``/``eos_token`` replace the
    tokenizer's own BOS/EOS for packing (``data.add_bos``/``add_eos``); they must be in its vocabulary.
    """

    path: str | None = None
    kind: str = "sentencepiece"
    vocab_size: int | None = None
    train_documents: int = 50000
    bos_token: str | None = None
    eos_token: str | None = None


@dataclass
class HubConfig:
    """A Hugging Face Hub dataset (or a local dataset directory), streamed."""

    path: str | None = None
    name: str | None = None
    split: str = "train"
    validation_split: str | None = None
    revision: str | None = None


@dataclass
class MixtureSourceConfig:
    """One weighted source of ``data.source=mixture``: its documents are drawn with this weight."""

    weight: float = 1.0
    source: str = "files"
    train_files: list[str] = field(default_factory=list)
    hub: HubConfig = field(default_factory=HubConfig)
    shards_dir: str | None = None
    text_field: str = "text"


@dataclass
class DataConfig:
    """Where documents come from, the held-out set, tokenization, packing and loader workers.

    ``source`` picks the training documents: ``sample`` (embedded corpus), ``files`` (local
    jsonl/json/parquet/txt), ``hub`` (a Hub dataset), ``shards`` (``pcpretrain tokenize`` output)
    or ``mixture`` (the weighted sources listed in ``mixture``).
    The held-out set is, in order of precedence: ``validation_files``, ``hub.validation_split``,
    ``validation_shards_dir``, or the first ``validation_documents`` documents of the source, which
    training then skips (for ``sample``: every ``1 / validation_fraction``-th document).
    """

    name: str = "sample"
    source: str = "sample"
    train_files: list[str] = field(default_factory=list)
    validation_files: list[str] = field(default_factory=list)
    hub: HubConfig = field(default_factory=HubConfig)
    shards_dir: str | None = None
    validation_shards_dir: str | None = None
    mixture: list[MixtureSourceConfig] = field(default_factory=list)
    text_field: str = "text"
    validation_fraction: float = 0.02
    validation_documents: int = 0
    seq_len: int = 256
    add_bos: bool = True
    add_eos: bool = True
    shuffle: bool = True
    shuffle_buffer: int = 1024
    # Logical streams the corpus is split into: with the seed, they alone decide the data order;
    # processes x max(num_workers, 1) must divide them (see pcpretrain.data.stream_layout).
    streams: int = 16
    num_workers: int = 0
    cache_dir: str | None = None
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class TrainerConfig:
    """Loop length, batch geometry, precision and evaluation cadence.

    ``batch_size`` is the global number of sequences per optimizer step; gradient accumulation
    is derived from it, ``micro_batch_size`` and the number of processes.
    """

    max_steps: int = 100
    stop_at: int | None = None
    batch_size: int = 16
    micro_batch_size: int = 8
    grad_clip: float = 1.0
    precision: str = "auto"
    # TF32 for the model's float32 matmuls on CUDA (the PC transform follows pc.tf32 instead).
    tf32: bool = True
    device: str = "auto"
    # torch.compile of each decoder layer (regional compilation); null: on for CUDA, off on CPU.
    compile: bool | None = None
    # Tokens per chunk of the fused LM-head cross-entropy, so the vocabulary-wide logits never exist in
    # full; 0 computes all logits at once (the plain path, for comparison).
    loss_chunk_tokens: int = LOSS_CHUNK_TOKENS
    # Recompute each decoder layer's activations in the backward pass instead of storing them.
    activation_checkpointing: bool = False
    eval_every: int = 50
    eval_batches: int | None = 8
    log_every: int = 1
    # Torch-profiler trace of optimizer steps "A-B" (1-based, inclusive, as in metrics.jsonl) or "A";
    # null: off. Written to <run.dir>/profile/ by the ranks in profile_ranks.
    profile: str | None = None
    profile_ranks: list[int] = field(default_factory=lambda: [0])


@dataclass
class DistributedConfig:
    """How the processes started by the launcher share the work; the process count is the launcher's.

    ``engine``: ``single`` (one process), ``ddp`` (replicated weights, all-reduced gradients),
    ``fsdp`` (FSDP2: parameters, gradients and optimizer state sharded per decoder layer; GPU or CPU),
    ``zero1``/``zero2``/``zero3`` (DeepSpeed ZeRO: optimizer state / + gradients / + parameters
    partitioned). Weights stay fp32 and gradients are reduced in fp32 under every engine; bf16 is
    autocast compute. ``stop_signals`` make every rank stop at an agreed step, checkpoint and exit
    with code 75 so the scheduler can requeue the job.
    """

    engine: str = "ddp"
    timeout_s: int = 1800
    fsdp_reshard_after_forward: bool = True
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGUSR2"])


@dataclass
class CheckpointConfig:
    """When and in which forms checkpoints are written; how many are kept."""

    every: int = 0
    keep_last: int = 2
    forms: list[str] = field(default_factory=lambda: ["unmerged"])
    final_forms: list[str] = field(default_factory=lambda: ["unmerged", "merged"])
    verify: str = "checksum"


@dataclass
class WandbConfig:
    """Weights & Biases logging (rank 0 only)."""

    mode: str = "disabled"
    project: str = "pcpretrain"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    """Console progress and experiment trackers.

    ``layer_stats``: per-PC-layer weight, gradient and gamma norms on logged steps and each decoder
    layer's activation RMS on evaluation steps (``layers/*`` metrics); off by default, it costs one
    device read per logged step. ``batch_hash``: a hash of each logged step's global batch
    (``batch_hash`` metric), to check that two runs trained on the same data; one all-reduce per logged
    step.
    """

    progress: bool = True
    layer_stats: bool = False
    batch_hash: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class SpectralConfig:
    """The spectral monitor: singular values of every hidden matrix, MCN and GMCN, during training.

    ``every``: optimizer steps between analyses (0: none at an interval); ``at_end``: also at the
    schedule's last step. Written to ``spectra.jsonl`` and as ``spectral/*`` metrics.
    """

    every: int = 3000
    at_end: bool = True


@dataclass
class TrainConfig:
    """The whole training run."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pc: PCConfig = field(default_factory=PCConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    seed: int = 0
    resume: str = "auto"


def register_configs() -> None:
    """Register the schema so ``configs/train.yaml`` can name it first in its defaults list."""
    from pcpretrain.run_dir import register_run_name_resolver

    register_run_name_resolver()
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def _positive(key: str, value: float | int, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value!r} is not allowed; it must be {bound}")


def resolve_compile(requested: bool | None, device: str) -> bool:
    """``null`` (``trainer.compile``, ``optimizer.compile``) compiles on GPUs, where it pays off; on CPUs
    compilation costs more than it saves."""
    return device == "cuda" if requested is None else requested


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


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def compose_train_config(overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """The typed config that ``pcpretrain train <overrides>`` would run with, composed outside a Hydra
    run (no run directory, no logging setup): for subcommands, benchmarks and tests."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return to_train_config(compose(config_name="train", overrides=list(overrides)))


def to_train_config(cfg: DictConfig | dict) -> TrainConfig:
    """Turn a composed (or saved) config into typed dataclasses, rejecting unknown keys."""
    schema = OmegaConf.structured(TrainConfig)
    merged = OmegaConf.merge(schema, cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML, the form saved in run directories and checkpoints."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_yaml(path: Path) -> TrainConfig:
    """Read a saved config, naming the file when it is unreadable or does not match the schema."""
    try:
        return to_train_config(OmegaConf.load(path))
    except Exception as exc:
        raise ConfigError(f"{path}: not a valid pcpretrain config ({exc})") from exc
