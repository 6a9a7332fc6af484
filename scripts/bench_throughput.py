"""Training throughput of several variants of one model, side by side in one process.

Each variant runs the real training step (accelerate engine, gradient accumulation, PC callbacks,
optimizer) on random tokens, and prints tokens/s, MFU, peak GPU memory, the optimizer's share of
the step, and the ratio of its throughput to the first variant's (the baseline). A variant that fails
(out of memory, a compile error) is reported as failed with its error, after its traceback on stderr,
and the others still run; the exit status is then 1.

    python scripts/bench_throughput.py                              # Llama-1B on the GPU: the issue's table
    python scripts/bench_throughput.py --variants baseline pc4 pc4-forward --micro-batches 10
    python scripts/bench_throughput.py --tiny                        # a seconds-long smoke run on a CPU
    python scripts/bench_throughput.py --variants pc4 --profile prof  # + prof/pc4/: trace, phases, top ops
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pcpretrain.batched_matmul import add_product_options, apply_product_options
from pcpretrain.config import TrainConfig, compose_train_config
from pcpretrain.errors import error_summary
from pcpretrain.model import flops_per_token, peak_flops
from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.callbacks.profiler import Profiler
from pcpretrain.train.engine import build_accelerator
from pcpretrain.train.run import build_training_parts
from pcpretrain.train.state import TrainState
from pcpretrain.train.trainer import Trainer

VARIANTS = {
    "baseline": ["pc.degree=0"],
    "pc4": ["pc.degree=4"],
    "pc4-forward": ["pc.degree=4", "pc.transform_every=forward"],
    "pc4-fp32": ["pc.degree=4", "pc.tf32=false"],
    "pc4-bf16": ["pc.degree=4", "pc.bf16_products=true"],
    "pc4-tf32": ["pc.degree=4", "pc.bf16_products=false"],
    "baseline-full-logits": ["pc.degree=0", "trainer.loss_chunk_tokens=0"],
    "muon": ["optimizer=muon", "pc.degree=0"],
    "muon-eager": ["optimizer=muon", "pc.degree=0", "optimizer.compile=false"],
    "muon-standard": ["optimizer=muon", "pc.degree=0", "optimizer.ns_method=standard"],
    "muon-pc2": ["optimizer=muon", "pc.degree=2"],
    "muon-pc2-eager": ["optimizer=muon", "pc.degree=2", "optimizer.compile=false"],
    "muon-pc2-compiled": ["optimizer=muon", "pc.degree=2", "optimizer.compile=true"],  # also on CPUs
}
TINY = ["model=tiny", "model.vocab_size=512"]


@dataclass
class Result:
    name: str
    tokens_per_s: float
    mfu: float | None
    peak_gib: float | None
    # Memory already allocated when the variant started: what earlier variants left behind (should be ~0).
    start_gib: float | None
    optimizer_share: float


class RandomBatches:
    """Micro-batches of random token windows, generated on the device (no loader in the way)."""

    def __init__(self, micro_batches: int, micro_batch_size: int, seq_len: int, vocab: int, device) -> None:
        self.shape = (micro_batch_size, seq_len + 1)
        self.micro_batches, self.vocab, self.device = micro_batches, vocab, device

    def next_step(self) -> list[torch.Tensor]:
        return [
            torch.randint(0, self.vocab, self.shape, device=self.device) for _ in range(self.micro_batches)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {}


def synchronized_now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(Callback):
    """Wall time of the steps after ``warmup``, with the device synchronised only at both ends, so the
    host-device overlap the trainer is built for is measured, not broken."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.start = self.end = 0.0

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.state.step == self.warmup:
            self.start = synchronized_now(self.device)
        elif trainer.at_last_step:
            self.end = synchronized_now(self.device)


class OptimizerTimer:
    """Times each ``optimizer.step`` with the device synchronised around it (used after the timed steps)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.seconds: list[float] = []
        self.inner = getattr(optimizer, "optimizer", optimizer)
        self.plain_step = self.inner.step
        self.device = device
        self.inner.step = self.timed_step

    def timed_step(self, *args: Any, **kwargs: Any) -> Any:
        start = synchronized_now(self.device)
        result = self.plain_step(*args, **kwargs)
        self.seconds.append(synchronized_now(self.device) - start)
        return result


def variant_config(overrides: list[str]) -> TrainConfig:
    return compose_train_config(["~experiment", *overrides])


def run_variant(
    name: str, cfg: TrainConfig, micro_batches: int, warmup: int, steps: int, profile_dir: Path | None = None
) -> Result:
    """Throughput over ``steps`` steps after ``warmup``; then ``steps`` more with the optimizer timed.
    With ``profile_dir``, the very last step (outside the throughput's timing) is profiled into
    ``profile_dir / name`` as ``trainer.profile`` does it."""
    accelerator = build_accelerator(cfg)
    device = accelerator.device
    start_gib = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None
    vocab = cfg.model.vocab_size or 32000
    torch.manual_seed(0)
    parts = build_training_parts(cfg, accelerator, vocab)
    timer = StepTimer(device, warmup)
    last = warmup + 2 * steps
    profilers = [Profiler((last, last), [0], profile_dir / name)] if profile_dir else []
    trainer = Trainer(
        accelerator=accelerator,
        model=parts.model,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        train_batches=RandomBatches(
            micro_batches, cfg.trainer.micro_batch_size, cfg.data.seq_len, vocab, device
        ),
        state=TrainState(),
        max_steps=last,
        stop_at=warmup + steps,
        grad_clip=cfg.trainer.grad_clip,
        loss_chunk_tokens=cfg.trainer.loss_chunk_tokens,
        pc_step=parts.pc_step,
        callbacks=[*profilers, timer],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit()
    step_time = (timer.end - timer.start) / steps
    optimizer_timer = OptimizerTimer(parts.optimizer, device)
    trainer.last_step = last
    trainer.fit()
    tokens_per_s = micro_batches * cfg.trainer.micro_batch_size * cfg.data.seq_len / step_time
    peak = peak_flops(device)
    result = Result(
        name=name,
        tokens_per_s=tokens_per_s,
        mfu=flops_per_token(cfg.model, vocab, cfg.data.seq_len) * tokens_per_s / peak if peak else None,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        start_gib=start_gib,
        optimizer_share=sum(optimizer_timer.seconds) / len(optimizer_timer.seconds) / step_time,
    )
    # Release everything this variant allocated before the next one starts (accelerate's references),
    # so each variant's peak memory is its own.
    accelerator.free_memory()
    del trainer, parts, accelerator, optimizer_timer
    release_memory()
    return result


def release_memory() -> None:
    """Drop compiled graphs and their guards, collect what no variant references any more, and give
    cached GPU memory back: after a variant, whether it finished or failed."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_variants(
    names: list[str],
    common: list[str],
    micro_batches: int,
    warmup: int,
    steps: int,
    profile_dir: Path | None = None,
) -> tuple[list[Result], dict[str, str]]:
    """Each variant's result, and for those that failed their error, so that one failure (an
    out-of-memory variant, a compile error) does not lose the others' figures."""
    results, failures = [], {}
    for name in names:
        cfg = variant_config([*common, *VARIANTS[name]])
        try:
            result = run_variant(name, cfg, micro_batches, warmup, steps, profile_dir)
        except Exception as error:
            traceback.print_exc()
            failures[name] = error_summary(error)
            release_memory()
            continue
        results.append(result)
        # As soon as it is known: a run cut short by a time limit keeps the rows it finished.
        print(format_row(result, results[0]), file=sys.stderr, flush=True)
    return results, failures


def format_row(r: Result, base: Result) -> str:
    """One variant's row of the table, its ratio against ``base``."""
    mfu = f"{100 * r.mfu:6.1f}%" if r.mfu is not None else "    n/a"
    peak = f"{r.peak_gib:9.1f}" if r.peak_gib is not None else "      n/a"
    start = f"{r.start_gib:9.1f}" if r.start_gib is not None else "      n/a"
    ratio = r.tokens_per_s / base.tokens_per_s
    share = 100 * r.optimizer_share
    return f"{r.name:20} {r.tokens_per_s:10,.0f} {mfu:>7} {peak} {start} {share:7.1f}% {ratio:12.3f}"


def render(results: list[Result], failures: dict[str, str], order: list[str]) -> str:
    """The table in the variants' order; ratios against the first variant that finished."""
    base = results[0] if results else None
    lines = [
        f"{'variant':20} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'start GiB':>9} {'optim %':>8} "
        f"{'vs ' + (base.name if base else '-'):>12}"
    ]
    finished = {r.name: r for r in results}
    for name in order:
        if name in failures:
            lines.append(f"{name:20} failed: {failures[name]}")
            continue
        lines.append(format_row(finished[name], base))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["baseline", "pc4", "pc4-forward", "muon-pc2"])
    parser.add_argument("--model", default="1B", help="a model config name: tiny, debug, 271M, 1B")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (10; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (3; --tiny: 1)")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every variant")
    parser.add_argument("--tiny", action="store_true", help="tiny model, short sequences: a CPU smoke run")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each variant's last step (untimed) into DIR/<variant>/: trace, phases, top ops",
    )
    add_product_options(parser)
    args = parser.parse_args()
    products_label = apply_product_options(args)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.tiny:
        args.seq_len, args.micro_batch_size, args.micro_batches = 32, 2, 2
    # A tiny run's few steps still compile (Muon's compiled kernels in its first two steps): give it
    # --warmup 3 or more to time steps after that.
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = (1 if args.tiny else 3) if args.warmup is None else args.warmup
    shape = TINY if args.tiny else [f"model={args.model}", "model.vocab_size=32000"]
    common = [
        *shape,
        f"data.seq_len={args.seq_len}",
        f"trainer.micro_batch_size={args.micro_batch_size}",
        f"trainer.batch_size={args.micro_batch_size * args.micro_batches}",
        "distributed=single",
        *args.set,
    ]
    results, failures = run_variants(
        args.variants, common, args.micro_batches, args.warmup, args.steps, args.profile
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    model = "tiny" if args.tiny else args.model
    print(
        f"model {model}, seq {args.seq_len}, micro-batch {args.micro_batch_size} "
        f"x {args.micro_batches} per step, on {device}, {products_label}"
    )
    print(render(results, failures, args.variants))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
