"""Optimizer step time of Muon (standard and Gram Newton-Schulz, eager and with its elementwise work
compiled) next to AdamW, in one process, for a model shape (default: the paper's 1B).

Gradients are random (the step's cost does not depend on their values); each optimizer is timed
over ``--steps`` steps after ``--warmup`` steps, on the GPU when there is one. Beside the times, the
floors: the matrix products' GFLOP and the other ops' GB of memory traffic of one Muon step, counted
per aten op on the meta device (so ``--count-only`` gives them for the 1B shapes on any machine).
A row that fails (a compile error, out of memory) reads "failed" with its error, the others still run,
and the exit status is then 1. ``--elementwise-only`` replaces Newton-Schulz by a conversion to its
dtype: the momentum step, the directions and the update alone, eager against compiled.

    python scripts/bench_optimizer.py                    # 1B shapes on the GPU
    python scripts/bench_optimizer.py --model debug      # small shapes, runs on a CPU
    python scripts/bench_optimizer.py --count-only       # the 1B floors alone, in seconds, anywhere
    python scripts/bench_optimizer.py --model debug --elementwise-only   # Muon's elementwise work alone
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

from pcpretrain import pc
from pcpretrain.batched_matmul import add_product_options, apply_product_options
from pcpretrain.config import compose_train_config
from pcpretrain.errors import error_summary
from pcpretrain.model import build_model
from pcpretrain.op_costs import OpCosts
from pcpretrain.optim import build_optimizer
from pcpretrain.optim.muon import NS_DTYPES, Muon

# Row name: optimizer config, PC degree of the model, further overrides.
ROWS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "adamw": ("adamw", 4, ()),
    "muon": ("muon", 2, ("optimizer.ns_method=standard", "optimizer.compile=false")),
    "muon-gram": ("muon", 2, ("optimizer.ns_method=gram", "optimizer.compile=false")),
    "muon-compiled": ("muon", 2, ("optimizer.ns_method=standard", "optimizer.compile=true")),
    "muon-gram-compiled": ("muon", 2, ("optimizer.ns_method=gram", "optimizer.compile=true")),
}
# Rows whose FLOPs and memory traffic are counted (see costs_by_row).
COUNTED = ("muon", "muon-gram")


def build(
    name: str,
    model_name: str,
    degree: int,
    device: torch.device,
    extra: tuple[str, ...] = (),
    elementwise_only: bool = False,
):
    """The model with PC layers of ``degree`` and random gradients, and the row's optimizer over it, with
    a ``found_inf`` flag as the trainer sets one (and Newton-Schulz skipped if ``elementwise_only``)."""
    cfg = compose_train_config([f"optimizer={name}", f"model={model_name}", *extra])
    torch.manual_seed(0)
    with device:  # built where it runs: no 1B model on the host just to count a meta step
        model = build_model(cfg.model, cfg.model.vocab_size or 32000)
        pc.apply_pc(model, degree)
    optimizer = build_optimizer(model, cfg.optimizer)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.found_inf = torch.zeros((), device=device)
    if elementwise_only and isinstance(optimizer, Muon):
        optimizer._batch_updates = skip_newton_schulz
    return optimizer


def skip_newton_schulz(params: list[torch.Tensor], directions: torch.Tensor, group: dict) -> torch.Tensor:
    """Stands in for Muon's Newton-Schulz: the directions converted to its dtype, as the update expects."""
    return directions.to(NS_DTYPES[group["ns_dtype"]])


def time_steps(
    name: str,
    model_name: str,
    degree: int,
    steps: int,
    warmup: int,
    device: torch.device,
    extra: tuple[str, ...] = (),
    elementwise_only: bool = False,
) -> float:
    optimizer = build(name, model_name, degree, device, extra, elementwise_only)
    for _ in range(warmup):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def count_step(
    name: str, model_name: str, degree: int, extra: tuple[str, ...] = (), elementwise_only: bool = False
) -> tuple[int, int]:
    """Matrix-product FLOPs and other ops' bytes of one step (the second: state exists by then), counted
    on the meta device. The eager rule's figures: torch.compile fuses the elementwise passes."""
    optimizer = build(name, model_name, degree, torch.device("meta"), extra, elementwise_only)
    optimizer.step()
    with OpCosts() as costs:
        optimizer.step()
    return costs.flops, costs.other_bytes


def costs_by_row(model_name: str, elementwise_only: bool = False) -> dict[str, tuple[str, str]]:
    """The GFLOP and other-GB columns: counted for the eager Muon rows; a compiled row does its eager
    twin's products in fewer elementwise passes (not counted); fused AdamW does not run on meta."""
    columns = {}
    for row in COUNTED:
        name, degree, extra = ROWS[row]
        flops, moved = count_step(name, model_name, degree, extra, elementwise_only)
        columns[row] = (f"{flops / 1e9:.1f}", f"{moved / 1e9:.2f}")
        columns[f"{row}-compiled"] = (columns[row][0], "-")
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="1B", help="a model config name: tiny, debug, 271M, 1B")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--count-only", action="store_true", help="the FLOP and byte columns only, no timing")
    parser.add_argument(
        "--elementwise-only",
        action="store_true",
        help="Newton-Schulz replaced by a conversion to its dtype: Muon's elementwise work alone",
    )
    add_product_options(parser)
    args = parser.parse_args()
    products_label = apply_product_options(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seconds: dict[str, float | str] = {row: "-" for row in ROWS}
    for row, (name, degree, extra) in ({} if args.count_only else ROWS).items():
        try:
            seconds[row] = time_steps(
                name, args.model, degree, args.steps, args.warmup, device, extra, args.elementwise_only
            )
        except Exception as error:
            traceback.print_exc()
            seconds[row] = f"failed: {error_summary(error)}"
        torch._dynamo.reset()
    costs = costs_by_row(args.model, args.elementwise_only)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    skipped = ", Newton-Schulz skipped (elementwise work alone)" if args.elementwise_only else ""
    print(f"model {args.model} on {where}, {products_label}{skipped}")
    print(f"{'optimizer':18} {'step ms':>10} {'vs AdamW':>9} {'GFLOP':>10} {'other GB':>9}")
    adamw = seconds["adamw"]
    failed = [row for row, value in seconds.items() if isinstance(value, str) and value.startswith("failed")]
    for row, value in seconds.items():
        if row in failed:
            print(f"{row:18} {value}")
            continue
        step_ms = f"{value * 1e3:.1f}" if isinstance(value, float) else value
        ratio = f"{value / adamw:.2f}" if isinstance(value, float) and isinstance(adamw, float) else "-"
        gigaflops, gigabytes = costs.get(row, ("-", "-"))
        print(f"{row:18} {step_ms:>10} {ratio:>9} {gigaflops:>10} {gigabytes:>9}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
