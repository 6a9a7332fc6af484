"""Optimizer step time of Muon (standard and Gram Newton-Schulz, eager and with its elementwise work
compiled) next to AdamW, in one process, for a model shape (default: the paper's 1B).

Gradients are random (the step's cost does not depend on their values); each optimizer is timed
over ``--steps`` steps after ``--warmup`` steps, on the GPU when there is one. A row that fails (a
compile error, out of memory) reads "failed" with its error, the others still run, and the exit status
is then 1.

    python scripts/bench_optimizer.py                    # 1B shapes on the GPU
    python scripts/bench_optimizer.py --model debug      # small shapes, runs on a CPU
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from pcpretrain import pc
from pcpretrain.config import register_configs, to_train_config
from pcpretrain.model import build_model
from pcpretrain.optim import build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "pcpretrain" / "configs"
# Row name: optimizer config, PC degree of the model, further overrides.
ROWS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "adamw": ("adamw", 4, ()),
    "muon": ("muon", 2, ()),
    "muon-gram": ("muon", 2, ("optimizer.ns_method=gram",)),
    "muon-compiled": ("muon", 2, ("optimizer.compile=true",)),
    "muon-gram-compiled": ("muon", 2, ("optimizer.ns_method=gram", "optimizer.compile=true")),
}


def optimizer_config(name: str, model: str, extra: tuple[str, ...] = ()):
    register_configs()
    overrides = [f"optimizer={name}", f"model={model}", *extra]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = to_train_config(compose(config_name="train", overrides=overrides))
    return cfg


def time_steps(
    name: str,
    model_name: str,
    degree: int,
    steps: int,
    warmup: int,
    device: torch.device,
    extra: tuple[str, ...] = (),
) -> float:
    cfg = optimizer_config(name, model_name, extra)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.model.vocab_size or 32000).to(device)
    pc.apply_pc(model, degree)
    optimizer = build_optimizer(model, cfg.optimizer)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="1B", help="a model config name: tiny, debug, 271M, 1B")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seconds: dict[str, float | str] = {}
    for row, (name, degree, extra) in ROWS.items():
        try:
            seconds[row] = time_steps(name, args.model, degree, args.steps, args.warmup, device, extra)
        except Exception as error:
            traceback.print_exc()
            seconds[row] = f"failed: {type(error).__name__}"
        torch._dynamo.reset()
    print(f"model {args.model} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}")
    print(f"{'optimizer':18} {'step ms':>10} {'vs AdamW':>9}")
    adamw = seconds["adamw"]
    for row, value in seconds.items():
        if isinstance(value, str):
            print(f"{row:18} {value}")
        else:
            ratio = f"{value / adamw:9.2f}" if isinstance(adamw, float) else f"{'-':>9}"
            print(f"{row:18} {value * 1e3:10.1f} {ratio}")
    if any(isinstance(value, str) for value in seconds.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
