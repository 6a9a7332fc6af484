"""Typed configuration schemas, registered in Hydra's ConfigStore, and their composition and storage.

The dataclasses are the single source of truth for key names and types: Hydra rejects unknown keys
and ill-typed values against them, and :func:`pcpretrain.config_validation.validate` rejects values
that are well-typed but out of range, naming the key and the allowed values, before any work starts.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pcpretrain.choices import (
    DEFAULT_PC_TARGETS,
    LOSS_CHUNK_TOKENS,
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


def resolve_compile(requested: bool | None, device: str) -> bool:
    """``null`` (``trainer.compile``, ``optimizer.compile``) compiles on GPUs, where it pays off; on CPUs
    compilation costs more than it saves."""
    return device == "cuda" if requested is None else requested


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
