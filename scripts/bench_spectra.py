"""Cost of one spectral-monitor analysis (``spectral.every``), and its share of training time.

Builds a model from a model config with PC layers and random initialisation, as training does, then
times the very function the monitor calls at each analysis (singular values of every hidden matrix,
stacked by shape, and the report built from them) in one process on the chosen device.

    python scripts/bench_spectra.py                          # Llama-1B on the GPU if there is one
    python scripts/bench_spectra.py --model 271M --device cpu
    python scripts/bench_spectra.py --model tiny             # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pcpretrain.config import ModelConfig, PCConfig, SpectralConfig, TrainConfig
from pcpretrain.train.callbacks.spectral_monitor import hidden_groups, model_spectra
from pcpretrain.train.run import build_training_model

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "pcpretrain" / "configs" / "model"


def model_config(name: str) -> ModelConfig:
    """The model config ``model=<name>`` selects, checked against the schema."""
    path = MODEL_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml")))
        raise SystemExit(f"bench_spectra.py: no model config {name!r}; choose one of {known}")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))


def synchronized_now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="1B", help="a model config name: tiny, debug, 271M, 1B")
    parser.add_argument("--degree", type=int, default=4, help="PC degree of the targeted matrices (0: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed analyses (their mean is reported)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed analyses first (default: 1 on GPUs)"
    )
    parser.add_argument("--every", type=int, default=SpectralConfig.every, help="spectral.every: steps apart")
    parser.add_argument("--step-seconds", type=float, default=0.9, help="an optimizer step's assumed time")
    args = parser.parse_args()
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else int(device.type == "cuda")

    cfg = TrainConfig(model=model_config(args.model), pc=PCConfig(degree=args.degree))
    torch.manual_seed(0)
    model, _ = build_training_model(cfg, cfg.model.vocab_size or 32000)
    model.to(device)
    groups = hidden_groups(model)
    for _ in range(warmup):
        model_spectra(model, step=0)
    start = synchronized_now(device)
    for _ in range(args.repeats):
        report = model_spectra(model, step=0)
    seconds = (synchronized_now(device) - start) / args.repeats

    share = seconds / (args.every * args.step_seconds + seconds)
    print(f"model                 {args.model} (PC degree {args.degree}) on {device}")
    print(f"matrices              {len(report.matrices)} in {len(groups)} same-shape stacks")
    print(f"seconds per analysis  {seconds:.3f}")
    print(f"gmcn                  {report.gmcn():.3f}")
    print(f"share of training     {100 * share:.3f}% at every={args.every}, {args.step_seconds} s per step")


if __name__ == "__main__":
    main()
