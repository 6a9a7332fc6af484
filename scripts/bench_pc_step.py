"""Time of the per-step PC phases (W_eff, its backward, the power iteration) against their FLOP count.

Builds the model's PC layers at a model config's shapes (default: the paper's 1B, PC degree 4), feeds
``begin`` / ``finish`` / ``update_spectral`` of :class:`pcpretrain.pc.step.PCStep` random gradients,
and prints milliseconds per phase, the matmul FLOPs each phase does and the rate it reached, and the
gigabytes its other ops read and write (both counted per aten op in one more, untimed step, by
:class:`pcpretrain.op_costs.OpCosts`): the two floors, compute and memory traffic, to hold the time
against. On a GPU the transform runs as in
training (TF32 unless ``--no-tf32``, its products with the large matrices in bf16 unless
``--no-bf16-products``, W_eff kept in bf16).

    python scripts/bench_pc_step.py                          # 1B shapes on the GPU
    python scripts/bench_pc_step.py --model 271M --layers 2  # a CPU-sized slice with the 1B aspect ratios
    python scripts/bench_pc_step.py --count-only             # the 1B floors alone (meta device), anywhere
    python scripts/bench_pc_step.py --count-only --ranks 8   # the busiest of 8 ranks' share of them
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable

import torch

from pcpretrain import pc
from pcpretrain.batched_matmul import add_product_options, apply_product_options
from pcpretrain.config import compose_train_config
from pcpretrain.model import build_model
from pcpretrain.op_costs import OpCosts
from pcpretrain.pc.groups import shape_groups
from pcpretrain.pc.layers import PCLinear, pc_modules
from pcpretrain.pc.precision import product_dtype
from pcpretrain.pc.step import PCStep
from pcpretrain.sharding import slice_bounds


def timed(device: torch.device, phase: Callable[[], None]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    phase()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def build_pc_model(model_name: str, layers: int | None, degree: int, device: torch.device) -> torch.nn.Module:
    overrides = [f"model={model_name}", *([f"model.num_layers={layers}"] if layers else [])]
    cfg = compose_train_config(["~experiment", *overrides])
    torch.manual_seed(0)
    with device:  # built where it runs: no 1B model on the host just to count a meta step
        model = build_model(cfg.model, cfg.model.vocab_size or 32000)
        pc.apply_pc(model, degree)
    return model


def busiest_rank_layers(layers: list[PCLinear], ranks: int) -> list[PCLinear]:
    """The layers whose transform rank 0 computes among ``ranks``: its slice of every shape group, as
    training splits them, which is the largest slice any rank gets."""
    return [
        layer for group in shape_groups(layers) for layer in group[slice(*slice_bounds(len(group), ranks)[0])]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="1B", help="a model config name: tiny, debug, 271M, 1B")
    parser.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    parser.add_argument("--degree", type=int, default=4, choices=[1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--no-tf32", action="store_true", help="float32 matmuls in the transform on CUDA")
    parser.add_argument(
        "--bf16-products",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="as pc.bf16_products=true/false; by default as training: on where W_eff is kept in bf16 "
        "(on a GPU and on the meta device), off on a CPU",
    )
    parser.add_argument(
        "--count-only", action="store_true", help="count FLOPs and bytes on the meta device, time nothing"
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="the work of the busiest of this many ranks: its slice of every shape group (collectives "
        "not included)",
    )
    add_product_options(parser)
    args = parser.parse_args()
    products_label = apply_product_options(args)
    if args.ranks < 1:
        parser.error(f"--ranks must be at least 1, got {args.ranks}")

    if args.count_only:
        device = torch.device("meta")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_pc_model(args.model, args.layers, args.degree, device)
    layers = busiest_rank_layers([mod for _, mod in pc_modules(model)], args.ranks)
    forward_dtype = torch.bfloat16 if device.type in ("cuda", "meta") else None
    step = PCStep(
        torch.nn.ModuleList(layers),
        forward_dtype=forward_dtype,
        tf32=not args.no_tf32,
        product_dtype=product_dtype(args.bf16_products, forward_dtype),
        split=False,
    )
    grads = [torch.randn_like(layer.weight, dtype=torch.float32) * 1e-3 for layer in layers]

    def one_step(measure: Callable[[str, Callable[[], None]], None]) -> None:
        """One optimizer step's PC phases in training order, each run through ``measure``; between
        them, the micro-batches' gradients arrive and the optimizer consumes the weights' gradients."""
        measure("begin", step.begin)
        for layer, grad in zip(layers, grads, strict=True):
            layer.add_step_grad(grad)
        measure("finish", step.finish)
        for layer in layers:
            layer.weight.grad = layer.pc_gamma.grad = None
        measure("spectral", step.update_spectral)

    seconds = {"begin": 0.0, "finish": 0.0, "spectral": 0.0}
    if args.count_only:
        # Counting follows a step: the Gram matrices are then kept from one step to the next, as in training.
        one_step(lambda name, phase: phase())
    else:
        for index in range(args.warmup + args.steps):
            weight = 1 / args.steps if index >= args.warmup else 0.0

            def time_phase(name: str, phase: Callable[[], None], weight: float = weight) -> None:
                seconds[name] += timed(device, phase) * weight

            one_step(time_phase)

    flops, traffic = {}, {}

    def count(name: str, phase: Callable[[], None]) -> None:
        with OpCosts() as costs:
            phase()
        flops[name], traffic[name] = costs.flops, costs.other_bytes

    one_step(count)

    shapes = dict(sorted(Counter(tuple(layer.weight.shape) for layer in layers).items()))
    products = "bf16" if step.product_dtype == torch.bfloat16 else "float32"
    share = f", the busiest of {args.ranks} ranks' share" if args.ranks > 1 else ""
    print(
        f"{len(layers)} PC layers{share}, layers per shape {shapes}, degree {args.degree}, {device.type}, "
        f"products with the large matrices in {products}, {products_label}"
    )
    for totals in (seconds, flops, traffic):
        totals["total"] = sum(totals.values())
    print(f"{'phase':<10}{'ms':>10}{'GFLOP':>12}{'TFLOP/s':>10}{'other GB':>10}")
    for name, value in seconds.items():
        gigaflops, gigabytes = flops[name] / 1e9, traffic[name] / 1e9
        if args.count_only:
            print(f"{name:<10}{'-':>10}{gigaflops:>12.3f}{'-':>10}{gigabytes:>10.3f}")
        else:
            rate = flops[name] / value / 1e12
            print(f"{name:<10}{value * 1e3:>10.1f}{gigaflops:>12.3f}{rate:>10.2f}{gigabytes:>10.3f}")


if __name__ == "__main__":
    main()
