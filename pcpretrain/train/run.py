"""Assemble a run from its config: data, model + PC layers, optimizer, resume, callbacks; then train."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from torch import nn

from pcpretrain import pc
from pcpretrain.choices import VOCAB_MULTIPLE
from pcpretrain.compat import ddp_ignore
from pcpretrain.config import (
    ConfigError,
    TrainConfig,
    resolve_compile,
    to_yaml,
)
from pcpretrain.config_validation import parse_step_range, validate
from pcpretrain.data.batches import StreamComponent, StreamingBatches
from pcpretrain.data.pipeline import PreparedData, prepare_data
from pcpretrain.data.stream import StreamSpec
from pcpretrain.data.stream_layout import ReaderLayout, check_reader_count
from pcpretrain.data.validation import validation_batches
from pcpretrain.errors import NonFiniteLossError
from pcpretrain.files import atomic_write_text
from pcpretrain.model import build_model, flops_per_token, peak_flops
from pcpretrain.optim import build_optimizer, build_scheduler, reapply_schedule
from pcpretrain.optim.routing import describe
from pcpretrain.pc import PCStep, ddp_ignored_names
from pcpretrain.pc.precision import product_dtype
from pcpretrain.stop_signals import StopSignals
from pcpretrain.train.callbacks.batch_hash import BatchHash
from pcpretrain.train.callbacks.checkpointing import Checkpointing
from pcpretrain.train.callbacks.evaluation import Evaluation
from pcpretrain.train.callbacks.layer_stats import ActivationRMS, LayerStats
from pcpretrain.train.callbacks.metrics_file import MetricsFile, read_metrics
from pcpretrain.train.callbacks.profiler import Profiler
from pcpretrain.train.callbacks.progress import ConsoleProgress
from pcpretrain.train.callbacks.spectral_monitor import SpectralMonitor
from pcpretrain.train.callbacks.speed import SpeedMonitor
from pcpretrain.train.callbacks.wandb_logger import WandbLogger
from pcpretrain.train.engine import (
    build_accelerator,
    launched_world_size,
    model_compile_error,
    resolve_precision,
)
from pcpretrain.train.preemption import Preemption
from pcpretrain.train.resume import check_compatible, check_same_routing, last_good, locate_resume, restore
from pcpretrain.train.state import TrainState
from pcpretrain.train.trainer import Trainer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SPECTRA_FILE = "spectra.jsonl"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
OPTIMIZER_GROUPS_FILE = "optimizer_groups.json"
# The dtype autocast runs the linear layers in, by accelerate's mixed-precision name.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunSummary:
    """What a user wants to know when a run ends."""

    run_dir: str
    step: int
    max_steps: int
    train_loss: float | None
    val_loss: float | None
    tokens: int
    tokens_per_s: float
    checkpoint: str | None
    merged_model: str | None
    stopped_by: str | None = None

    def render(self) -> str:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        lines = [
            f"run directory   {self.run_dir}",
            f"steps           {self.step}/{self.max_steps}",
            f"train loss      {fmt(self.train_loss)}",
            f"val loss        {fmt(self.val_loss)}",
            f"tokens          {self.tokens:,}",
            f"tokens/s        {self.tokens_per_s:,.0f}",
            f"checkpoint      {self.checkpoint or 'none written'}",
            f"merged model    {self.merged_model or 'none written'}",
        ]
        if self.stopped_by:
            lines.append(f"stopped by      {self.stopped_by} (resume with the same command and run.dir)")
        return "\n".join(lines)


def build_training_model(
    cfg: TrainConfig, vocab_size: int, bos_id: int | None = 1, eos_id: int | None = 2
) -> tuple[nn.Module, list[str]]:
    """The model as training runs it, and the names of its PC layers: a freshly initialised Llama with
    PC layers swapped in and, if asked, each decoder layer's activations recomputed in the backward."""
    model = build_model(cfg.model, vocab_size, bos_id, eos_id)
    converted = pc.apply_pc(model, cfg.pc.degree, cfg.pc.targets, cfg.pc.power_iters, seed=cfg.seed)
    if cfg.trainer.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, converted


@dataclass
class TrainingParts:
    """What a step needs, prepared by the engine: the same for ``pcpretrain train`` and the benchmark."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pc_step: PCStep | None
    # Which parameters each optimizer group holds (``optimizer_groups.json``, and in each checkpoint).
    assignment: list[dict[str, Any]]


def build_training_parts(
    cfg: TrainConfig,
    accelerator: Accelerator,
    vocab_size: int,
    bos_id: int | None = 1,
    eos_id: int | None = 2,
) -> TrainingParts:
    """Model with PC layers, optimizer and schedule, prepared by ``accelerator``, and the PC step phases."""
    model, converted = build_training_model(cfg, vocab_size, bos_id, eos_id)
    per_step_pc = uses_per_step_pc(cfg)
    log.info(
        "PC degree %d on %d matrices, transform computed once per %s%s",
        cfg.pc.degree,
        len(converted),
        "optimizer step" if per_step_pc else "micro-batch forward",
        ", its products with the large matrices in bf16" if pc_product_dtype(cfg, accelerator) else "",
    )
    if per_step_pc:  # a no-op unless accelerate wraps the model in DDP (which it may do for one process)
        ddp_ignore(model, ddp_ignored_names(model))
    model.to(accelerator.device)
    optimizer = build_optimizer(model, cfg.optimizer)
    assignment = describe(optimizer.param_groups)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.trainer.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return TrainingParts(model, optimizer, scheduler, build_pc_step(cfg, model, accelerator), assignment)


def run_training(cfg: TrainConfig, run_dir: Path) -> RunSummary:
    """Train (or resume) the run described by ``cfg`` in ``run_dir``."""
    validate(cfg, launched_world_size())
    check_reader_layout(cfg, launched_world_size())
    accelerator = build_accelerator(cfg)
    validate(cfg, accelerator.num_processes)
    check_reader_layout(cfg, accelerator.num_processes)
    ckpt_root = run_dir / "checkpoints"
    resume_from = locate_resume(cfg, ckpt_root)
    set_seed(cfg.seed)

    data = prepare_data(cfg.data)
    vocab_size = resolve_vocab_size(cfg, data)
    if resume_from is not None:
        check_compatible(resume_from, cfg, data)

    # The model's config names the data's BOS/EOS (overrides included), else the tokenizer's own.
    bos_id = data.tokenizer.bos_id if data.bos_id is None else data.bos_id
    eos_id = data.tokenizer.eos_id if data.eos_id is None else data.eos_id
    parts = build_training_parts(cfg, accelerator, vocab_size, bos_id, eos_id)
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler

    train_batches = build_train_batches(cfg, data, accelerator, accelerator.gradient_accumulation_steps)
    state = TrainState()
    if resume_from is not None:
        check_same_routing(resume_from, parts.assignment)
        state = restore(accelerator, resume_from, train_batches, cfg.distributed.engine)
        reapply_schedule(scheduler.scheduler)
        log.info("resumed from %s at step %d", resume_from, state.step)
    if state.step >= (cfg.trainer.stop_at or cfg.trainer.max_steps):
        log.warning("nothing to train: the run is at step %d already", state.step)

    # Only now, with every check passed, is anything in the run directory written.
    config_yaml = to_yaml(cfg)
    assignment_json = json.dumps(parts.assignment, indent=2)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, config_yaml)
        atomic_write_text(run_dir / OPTIMIZER_GROUPS_FILE, assignment_json)
    speed = SpeedMonitor(
        tokens_per_step=cfg.trainer.batch_size * cfg.data.seq_len,
        flops_per_token=flops_per_token(cfg.model, vocab_size, cfg.data.seq_len),
        peak_flops_total=_total_peak(accelerator),
    )
    evaluation = Evaluation(
        validation_batches(
            data.validation,
            seq_len=cfg.data.seq_len,
            bos_id=data.bos_id,
            eos_id=data.eos_id,
            vocab_size=data.tokenizer.vocab_size,
            batch_size=cfg.trainer.micro_batch_size,
            max_batches=cfg.trainer.eval_batches,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        ),
        cfg.trainer.eval_every,
        probes=[ActivationRMS()] if cfg.logger.layer_stats else [],
    )
    checkpointing = Checkpointing(cfg, ckpt_root, config_yaml, assignment_json, data.tokenizer, resume_from)
    log_every = cfg.trainer.log_every
    preemption = Preemption(StopSignals(cfg.distributed.stop_signals))
    callbacks = [
        *(
            [Profiler(parse_step_range(cfg.trainer.profile), cfg.trainer.profile_ranks, run_dir / "profile")]
            if cfg.trainer.profile
            else []
        ),
        preemption,
        speed,
        evaluation,
        *([LayerStats(log_every)] if cfg.logger.layer_stats else []),
        *([BatchHash(log_every)] if cfg.logger.batch_hash else []),
        *(
            [SpectralMonitor(run_dir / SPECTRA_FILE, cfg.spectral.every, cfg.spectral.at_end)]
            if cfg.spectral.every > 0 or cfg.spectral.at_end
            else []
        ),
        *([ConsoleProgress()] if cfg.logger.progress else []),
        MetricsFile(run_dir / METRICS_FILE, log_every),
    ]
    if cfg.logger.wandb.mode != "disabled":
        config_dict = OmegaConf.to_container(OmegaConf.structured(cfg))
        callbacks.append(WandbLogger(cfg.logger.wandb, run_dir, config_dict, log_every))
    callbacks.append(checkpointing)

    trainer = Trainer(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_batches=train_batches,
        state=state,
        max_steps=cfg.trainer.max_steps,
        stop_at=cfg.trainer.stop_at,
        grad_clip=cfg.trainer.grad_clip,
        loss_chunk_tokens=cfg.trainer.loss_chunk_tokens,
        pc_step=parts.pc_step,
        callbacks=callbacks,
    )
    try:
        trainer.fit()
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(f"{exc}; {last_good(checkpointing, resume_from)}") from exc
    except torch._dynamo.exc.TorchDynamoException as exc:
        if not resolve_compile(cfg.trainer.compile, accelerator.device.type):
            raise
        raise model_compile_error(exc, last_good(checkpointing, resume_from)) from exc
    summary = summarize(run_dir, cfg, trainer, speed, checkpointing)
    summary.stopped_by = preemption.stopped_by
    if accelerator.is_main_process:
        atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(asdict(summary), indent=2))
    return summary


def build_pc_step(cfg: TrainConfig, model: nn.Module, accelerator: Accelerator) -> PCStep | None:
    """The PC phases of each step for the prepared ``model`` (None without PC layers)."""
    if cfg.pc.degree == 0:
        return None
    return PCStep(
        accelerator.unwrap_model(model),
        per_step=uses_per_step_pc(cfg),
        forward_dtype=forward_dtype(cfg, accelerator),
        tf32=cfg.pc.tf32,
        product_dtype=pc_product_dtype(cfg, accelerator),
    )


def forward_dtype(cfg: TrainConfig, accelerator: Accelerator) -> torch.dtype | None:
    """The dtype autocast runs the model's matmuls in (None without mixed precision), whoever applies
    it: accelerate, or DeepSpeed's own ``torch_autocast`` under the ZeRO engines."""
    return AUTOCAST_DTYPES.get(resolve_precision(cfg.trainer.precision, accelerator.device.type))


def pc_product_dtype(cfg: TrainConfig, accelerator: Accelerator) -> torch.dtype | None:
    """The dtype of the per-step transform's products with the large matrices (``pc.bf16_products``,
    resolved against the forward's dtype); None without the per-step transform."""
    if not uses_per_step_pc(cfg):
        return None
    return product_dtype(cfg.pc.bf16_products, forward_dtype(cfg, accelerator))


def uses_per_step_pc(cfg: TrainConfig) -> bool:
    """The per-step PC path, under every engine, unless ``pc.transform_every=forward``."""
    return cfg.pc.degree > 0 and cfg.pc.transform_every == "step"


def resolve_vocab_size(cfg: TrainConfig, data: PreparedData) -> int:
    """The embedding size: the config's, which must hold every tokenizer id, or the tokenizer's own
    rounded up to a multiple of :data:`VOCAB_MULTIPLE` (faster matmuls; the extra rows are never targets)."""
    tokenizer_size = data.tokenizer.vocab_size
    if cfg.model.vocab_size is None:
        return -(-tokenizer_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    if cfg.model.vocab_size < tokenizer_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({tokenizer_size}, {data.tokenizer.location}); set model.vocab_size>={tokenizer_size} or null"
        )
    return cfg.model.vocab_size


def build_train_batches(
    cfg: TrainConfig, data: PreparedData, accelerator: Accelerator, grad_accum: int
) -> StreamingBatches:
    """This rank's loader: its logical streams, computed by its loader workers (or itself)."""
    components = [
        StreamComponent(
            part.source,
            part.encoder,
            StreamSpec(
                seq_len=cfg.data.seq_len,
                seed=cfg.seed,
                shuffle=cfg.data.shuffle,
                shuffle_buffer=cfg.data.shuffle_buffer,
                num_streams=cfg.data.streams,
                num_shards=part.source.num_shards,
                bos_id=data.bos_id,
                eos_id=data.eos_id,
                vocab_size=data.tokenizer.vocab_size,
            ),
            part.weight,
            part.skip_head,
        )
        for part in data.components
    ]
    layout = ReaderLayout(cfg.data.streams, accelerator.num_processes, cfg.data.num_workers)
    return StreamingBatches(
        components,
        layout,
        accelerator.process_index,
        cfg.trainer.micro_batch_size,
        grad_accum,
        hash_batches=cfg.logger.batch_hash,
    )


def check_reader_layout(cfg: TrainConfig, world_size: int) -> None:
    """Refuse, before anything is read or written, a reader count that does not divide ``data.streams``."""
    try:
        check_reader_count(cfg.data.streams, world_size, cfg.data.num_workers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def summarize(
    run_dir: Path, cfg: TrainConfig, trainer: Trainer, speed: SpeedMonitor, checkpointing: Checkpointing
) -> RunSummary:
    records = read_metrics(run_dir / METRICS_FILE)
    losses = [r["loss"] for r in records if "loss" in r]
    val_losses = [r["val_loss"] for r in records if "val_loss" in r]
    return RunSummary(
        run_dir=str(run_dir),
        step=trainer.state.step,
        max_steps=cfg.trainer.max_steps,
        train_loss=losses[-1] if losses else None,
        val_loss=val_losses[-1] if val_losses else None,
        tokens=trainer.state.tokens,
        tokens_per_s=speed.mean_tokens_per_s,
        checkpoint=str(checkpointing.saved["unmerged"]) if "unmerged" in checkpointing.saved else None,
        merged_model=str(checkpointing.saved["merged"]) if "merged" in checkpointing.saved else None,
    )


def _total_peak(accelerator: Accelerator) -> float | None:
    peak = peak_flops(accelerator.device)
    return peak * accelerator.num_processes if peak else None
