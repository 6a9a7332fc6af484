"""``pcpretrain <command>``: a thin dispatcher; each command's work lives in its own module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = """usage: pcpretrain <command> [arguments]

commands:
  train [overrides...]           train (or resume) a run; Hydra overrides such as
                                 model=debug pc.degree=2 trainer.max_steps=50 run.dir=runs/x
                                 (-m for a sweep: pcpretrain train -m pc.degree=0,4)
  export <checkpoint> <out dir>  write the merged Hugging Face Llama of an unmerged checkpoint

`pcpretrain train --help` lists the config groups and their options.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "train":
        return train_command(rest)
    if command == "export":
        return export_command(rest)
    print(f"pcpretrain: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def train_command(overrides: list[str]) -> int:
    """Hand the overrides to Hydra, which composes the config and calls :func:`_train_task`."""
    import hydra

    from pcpretrain.config import ConfigError, check_override_keys, register_configs
    from pcpretrain.sweep import register_sweep_resolver

    config_dir = Path(__file__).resolve().parent / "configs"
    try:
        check_override_keys([o for o in overrides if not o.startswith("-")], _groups(config_dir))
    except ConfigError as exc:
        print(f"pcpretrain: configuration error: {exc}", file=sys.stderr)
        return 2
    register_configs()
    register_sweep_resolver(overrides)
    task = hydra.main(config_path=str(config_dir), config_name="train", version_base="1.3")(_train_task)
    saved_argv = sys.argv
    sys.argv = ["pcpretrain-train", *overrides]
    try:
        task()
    finally:
        sys.argv = saved_argv
    return 0


def _groups(config_dir: Path) -> set[str]:
    """Config group names (the folders of the YAML tree), which overrides select rather than set."""
    return {path.name for path in config_dir.iterdir() if path.is_dir() and not path.name.startswith("_")}


def _train_task(dict_cfg) -> None:
    """One run (or one sweep point): typed config, run directory from Hydra, train, print the summary."""
    from hydra.core.hydra_config import HydraConfig

    from pcpretrain.config import ConfigError, to_train_config, validate
    from pcpretrain.train.errors import TrainingError

    try:
        cfg = to_train_config(dict_cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
        cfg.run.dir = str(run_dir)
        validate(cfg)  # before the heavy imports below, so bad input fails in a second
        from pcpretrain.train.run import run_training

        summary = run_training(cfg, run_dir)
    except ConfigError as exc:
        print(f"pcpretrain: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"pcpretrain: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    print("\n" + summary.render(), flush=True)


def export_command(args: list[str]) -> int:
    """Merged export of an unmerged checkpoint."""
    parser = argparse.ArgumentParser(
        prog="pcpretrain export",
        description="Write the merged (plain Hugging Face Llama) form of a checkpoint.",
    )
    parser.add_argument(
        "checkpoint", type=Path, help="an unmerged checkpoint directory (checkpoints/step_XXXXXXXX)"
    )
    parser.add_argument("out_dir", type=Path, help="where to write the Hugging Face model directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    ns = parser.parse_args(args)

    from pcpretrain.export import export_checkpoint
    from pcpretrain.train.errors import TrainingError

    try:
        out = export_checkpoint(ns.checkpoint, ns.out_dir, overwrite=ns.overwrite)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"pcpretrain export: {exc}", file=sys.stderr)
        return 1
    print(f"merged model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
