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
  compare <run or sweep dirs...> [--baseline K=V[,K=V]] [--json] [--png F | --no-plot]
                                 runs grouped over seeds: losses, GMCN, eval scores as mean ± std,
                                 differences to a baseline group; validation curves
  spectra <checkpoints, model, run or sweep dirs...> [--out D] [--no-plots]
                                 weight spectra (MCN, GMCN, sigma/sigma_1) of checkpoints, with plots
  eval <merged model dir> [--heldout FILES...] [--tasks T1,T2] [--include-path D] [--limit N]
                                 held-out perplexity and lm-eval tasks; scores into <dir>/eval.json
  schedule [overrides...] [--png F]
                                 print (and plot) the learning-rate schedule a config would use
  tokenize --tokenizer T --out D [--workers N] (FILES... | --hub PATH)
                                 tokenize a corpus once into memory-mapped token shards, one
                                 per input shard; rerun the same command to continue a killed run
  tokenizer train --out M --vocab-size N [--kind sentencepiece|bpe] (FILES... | --hub PATH)
                                 train a tokenizer on a corpus: a Llama-2 style SentencePiece BPE
                                 (M: a .model file) or a Llama-3 style byte-level BPE (M: a directory)

`pcpretrain train --help` lists the config groups and their options.
"""


# Set once Hydra has composed a config and handed it to the task: a later exit status is the run's own.
_TASK_STARTED = False


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
    if command == "compare":
        return compare_command(rest)
    if command == "spectra":
        return spectra_command(rest)
    if command == "eval":
        return eval_command(rest)
    if command == "schedule":
        return schedule_command(rest)
    if command == "tokenize":
        return tokenize_command(rest)
    if command == "tokenizer":
        return tokenizer_command(rest)
    print(f"pcpretrain: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def train_command(overrides: list[str]) -> int:
    """Hand the overrides to Hydra, which composes the config and calls :func:`_train_task`."""
    from pcpretrain.exit_codes import BAD_INPUT, TRAINING_FAILED, for_stop_signal
    from pcpretrain.stop_signals import StopRequested, install_setup_handlers, restore_outer_handlers

    install_setup_handlers()  # before anything slow: a stop signal during setup exits cleanly
    import hydra

    from pcpretrain.config import CONFIG_DIR, ConfigError, register_configs
    from pcpretrain.config_validation import check_override_keys
    from pcpretrain.sweep import register_sweep_resolver

    try:
        check_override_keys([o for o in overrides if not o.startswith("-")], _groups(CONFIG_DIR))
    except ConfigError as exc:
        print(f"pcpretrain: configuration error: {exc}", file=sys.stderr)
        return BAD_INPUT
    register_configs()
    register_sweep_resolver(overrides)
    task = hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(_train_task)
    saved_argv = sys.argv
    sys.argv = ["pcpretrain-train", *overrides]
    try:
        task()
    except StopRequested as stop:
        print(f"pcpretrain: {stop}", file=sys.stderr)
        return for_stop_signal(stop.signal.name)
    except SystemExit as exit_:
        # Hydra reports an override or config it cannot compose with exit status 1, before any run.
        if exit_.code == TRAINING_FAILED and not _TASK_STARTED:
            return BAD_INPUT
        raise
    finally:
        sys.argv = saved_argv
        restore_outer_handlers()
    return 0


def _groups(config_dir: Path) -> set[str]:
    """Config group names (the folders of the YAML tree), which overrides select rather than set."""
    return {path.name for path in config_dir.iterdir() if path.is_dir() and not path.name.startswith("_")}


def _train_task(dict_cfg) -> None:
    """One run (or one sweep point): the run directory from Hydra, then train under its lock."""
    from hydra.core.hydra_config import HydraConfig

    from pcpretrain.run_guard import run_guarded
    from pcpretrain.slurm_env import export_torch_env_from_slurm

    global _TASK_STARTED
    _TASK_STARTED = True
    export_torch_env_from_slurm()  # a task srun or submitit started directly joins the job's group
    code = run_guarded(dict_cfg, Path(HydraConfig.get().runtime.output_dir).resolve())
    if code:
        sys.exit(code)


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

    from pcpretrain.errors import TrainingError
    from pcpretrain.export import export_checkpoint

    try:
        out = export_checkpoint(ns.checkpoint, ns.out_dir, overwrite=ns.overwrite)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"pcpretrain export: {exc}", file=sys.stderr)
        return 1
    print(f"merged model written to {out}")
    return 0


def compare_command(args: list[str]) -> int:
    """Compare finished or running runs, the seeds of one setting as one row (a sweep directory expands
    to its runs)."""
    parser = argparse.ArgumentParser(prog="pcpretrain compare", description=compare_command.__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories")
    parser.add_argument("--png", type=Path, default=None, help="where to write the validation curves")
    parser.add_argument("--no-plot", action="store_true", help="write no validation-curve PNG")
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE[,KEY=VALUE...]",
        help="the group the others are compared with (default: the one pc.degree=0 group, if any)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    ns = parser.parse_args(args)
    from pcpretrain.analysis.compare import compare

    png = ns.png or (
        ns.paths[0] / "validation_curves.png" if ns.paths[0].is_dir() else Path("validation_curves.png")
    )
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        print(compare(ns.paths, None if ns.no_plot else png, baseline=ns.baseline, as_json=ns.json))
    except (ValueError, OSError, OmegaConfBaseException, YAMLError) as exc:
        print(f"pcpretrain compare: {exc}", file=sys.stderr)
        return 1
    return 0


def spectra_command(args: list[str]) -> int:
    """Weight spectra of checkpoints (a run or sweep directory expands to its checkpoints), offline on CPU."""
    parser = argparse.ArgumentParser(prog="pcpretrain spectra", description=spectra_command.__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="checkpoints, model dirs, run or sweep dirs")
    parser.add_argument("--out", type=Path, help="where to write (default: <first path>/spectra)")
    parser.add_argument("--no-plots", action="store_true", help="write spectra.jsonl only, no PNGs")
    ns = parser.parse_args(args)
    from safetensors import SafetensorError

    from pcpretrain.analysis.spectra_report import spectra_report
    from pcpretrain.errors import TrainingError

    out = ns.out or (ns.paths[0] / "spectra" if ns.paths[0].is_dir() else Path("spectra"))
    try:
        print(spectra_report(ns.paths, out, plots=not ns.no_plots))
    except (TrainingError, ValueError, OSError, SafetensorError) as exc:
        print(f"pcpretrain spectra: {exc}", file=sys.stderr)
        return 1
    return 0


def eval_command(args: list[str]) -> int:
    """Held-out perplexity (as training's val_loss) and lm-eval tasks of a merged checkpoint; the scores
    accumulate in <model dir>/eval.json."""
    from pcpretrain.analysis.merged_model import DTYPES

    parser = argparse.ArgumentParser(prog="pcpretrain eval", description=eval_command.__doc__)
    add = parser.add_argument
    add("model_dir", type=Path, help="a merged checkpoint (checkpoints/step_XXXXXXXX-merged)")
    add("--heldout", nargs="+", action="extend", default=[], metavar="FILE", help="jsonl/json/txt files")
    add("--text-field", default="text", metavar="NAME", help="the field holding the text (default: text)")
    add("--seq-len", type=_positive_int, metavar="N", help="window length (default: the run's)")
    add("--max-batches", type=_positive_int, metavar="N", help="score only the first N batches of windows")
    add("--tasks", action="append", default=[], metavar="T1,T2", help="lm-eval tasks (lambada_openai,piqa)")
    add("--include-path", action="append", type=Path, default=[], metavar="DIR", help="local task YAMLs")
    add("--num-fewshot", type=_non_negative_int, default=0, metavar="N", help="examples in context (0)")
    add("--limit", type=_limit, metavar="N", help="examples per task (a fraction if below 1)")
    add("--batch-size", type=_positive_int, default=8, metavar="N", help="windows/requests per forward (8)")
    add("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto (default: cpu)")
    add("--dtype", choices=DTYPES, default="float32", help="the weights' dtype (default: float32)")
    ns = parser.parse_args(args)
    from pcpretrain.analysis.eval_errors import EvalInputError
    from pcpretrain.analysis.eval_results import scores_table
    from pcpretrain.analysis.model_eval import EvalRequest, evaluate_model
    from pcpretrain.errors import TrainingError

    request = EvalRequest(
        model_dir=ns.model_dir,
        heldout=ns.heldout,
        tasks=[task for entry in ns.tasks for task in entry.split(",") if task],
        include_paths=ns.include_path,
        num_fewshot=ns.num_fewshot,
        limit=ns.limit,
        batch_size=ns.batch_size,
        seq_len=ns.seq_len,
        max_batches=ns.max_batches,
        text_field=ns.text_field,
        device=ns.device,
        dtype=ns.dtype,
    )
    try:
        scores, path = evaluate_model(request)
    except EvalInputError as exc:
        print(f"pcpretrain eval: {exc}", file=sys.stderr)
        return 2
    except (TrainingError, RuntimeError, ValueError, OSError) as exc:
        print(f"pcpretrain eval: {exc}", file=sys.stderr)
        return 1
    print(f"{scores_table(scores)}\n\nscores written to {path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _limit(text: str) -> int | float:
    """lm-eval's limit: a count of examples, or a fraction of them when below 1."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return int(value) if value >= 1 and value.is_integer() else value


def schedule_command(args: list[str]) -> int:
    """Print the learning-rate schedule of the config that ``pcpretrain train <overrides>`` would use."""
    parser = argparse.ArgumentParser(prog="pcpretrain schedule", description=schedule_command.__doc__)
    parser.add_argument("overrides", nargs="*", help="the same overrides as for train")
    parser.add_argument("--png", type=Path, default=None, help="also plot the schedule to this PNG")
    ns = parser.parse_args(args)
    from hydra.errors import HydraException

    from pcpretrain.analysis.schedule_preview import plot_schedule, schedule_table
    from pcpretrain.config import ConfigError, compose_train_config
    from pcpretrain.config_validation import validate

    try:
        cfg = compose_train_config(ns.overrides)
        validate(cfg)
    except (ConfigError, HydraException) as exc:
        print(f"pcpretrain schedule: configuration error: {exc}", file=sys.stderr)
        return 2
    print(schedule_table(cfg.scheduler, cfg.trainer.max_steps, cfg.optimizer.lr))
    if ns.png:
        print(f"plot: {plot_schedule(cfg.scheduler, cfg.trainer.max_steps, cfg.optimizer.lr, ns.png)}")
    return 0


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", help="local jsonl/json/parquet/txt files, globs or directories")
    parser.add_argument(
        "--hub", help="a Hugging Face Hub dataset (or local dataset directory) instead of files"
    )
    parser.add_argument("--hub-name", default=None, help="the dataset's configuration name")
    parser.add_argument("--split", default="train", help="the Hub dataset's split (default: train)")
    parser.add_argument("--text-field", default="text", help="the column holding the text (default: text)")


def _open_source(parser: argparse.ArgumentParser, ns: argparse.Namespace):
    from pcpretrain.data.sources import TextSource

    if bool(ns.files) == bool(ns.hub):
        parser.error("give either input files or --hub, not both and not neither")
    if ns.files:
        source = TextSource.from_files(ns.files, text_field=ns.text_field)
    else:
        source = TextSource.from_hub(ns.hub, name=ns.hub_name, split=ns.split, text_field=ns.text_field)
    source.check()
    return source


def tokenize_command(args: list[str]) -> int:
    """Token shards from a text corpus, for ``data=shards`` runs: one output shard per input shard
    (file or Hub shard), tokenized in parallel processes. A killed run continues where it stopped
    when the same command runs again (its work is kept in ``<out>.partial``)."""
    parser = argparse.ArgumentParser(prog="pcpretrain tokenize", description=tokenize_command.__doc__)
    _add_source_arguments(parser)
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="a SentencePiece .model, a tokenizer.json, a tokenizer directory or a Hub tokenizer id",
    )
    parser.add_argument("--out", type=Path, required=True, help="the token-shard directory to write")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes tokenizing whole input shards, one core each (default 1; 0: in this process). "
        "The input's shard count bounds the parallelism: more workers than shards do nothing",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing non-empty --out, and discard an unfinished run with other settings",
    )
    ns = parser.parse_intermixed_args(args)  # files may follow the options
    from pcpretrain.data.pretokenize import tokenize_to_shards
    from pcpretrain.data.tokenizer import load_tokenizer

    _log_progress("pcpretrain.data")
    try:
        source = _open_source(parser, ns)
        shards = tokenize_to_shards(
            source,
            load_tokenizer(ns.tokenizer),
            ns.out,
            description=_describe_source(ns),
            overwrite=ns.overwrite,
            workers=ns.workers,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"pcpretrain tokenize: {exc}", file=sys.stderr)
        return 1
    print(f"{shards.total_tokens:,} tokens in {shards.num_shards} shards written to {ns.out}")
    return 0


def _describe_source(ns: argparse.Namespace) -> str:
    """Everything on the command line that decides which texts are read (recorded with the shards)."""
    where = f"Hub dataset {ns.hub!r} name {ns.hub_name!r} split {ns.split!r}" if ns.hub else str(ns.files)
    return f"{where}, text field {ns.text_field!r}"


def _log_progress(logger_name: str) -> None:
    """INFO lines of ``logger_name`` (progress) on stderr with the time, other libraries' left alone."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)


def tokenizer_command(args: list[str]) -> int:
    """``pcpretrain tokenizer train``: a SentencePiece BPE (byte fallback, split digits; Llama-2 style)
    or a byte-level BPE (Llama-3 style, a Hugging Face tokenizer.json) on a corpus."""
    from pcpretrain.choices import TOKENIZER_KINDS

    parser = argparse.ArgumentParser(prog="pcpretrain tokenizer", description=tokenizer_command.__doc__)
    parser.add_argument("action", choices=["train"])
    _add_source_arguments(parser)
    parser.add_argument(
        "--kind",
        choices=TOKENIZER_KINDS,
        default="sentencepiece",
        help="sentencepiece (default): a SentencePiece .model; bpe: a byte-level BPE tokenizer.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="sentencepiece: the .model file to write; bpe: the directory to write tokenizer.json and "
        "tokenizer_config.json into (use either as data.tokenizer.path)",
    )
    parser.add_argument("--vocab-size", type=int, default=32000, help="ids, special tokens included")
    parser.add_argument("--documents", type=int, default=200_000, help="read at most this many documents")
    ns = parser.parse_intermixed_args(args)  # files may follow the options
    import itertools

    from pcpretrain.data.tokenizer import train_bpe, train_sentencepiece

    train = train_bpe if ns.kind == "bpe" else train_sentencepiece
    try:
        source = _open_source(parser, ns)
        texts = itertools.chain.from_iterable(source.iter_shard(s) for s in range(source.num_shards))
        documents = [text for text in itertools.islice(texts, ns.documents) if text]
        tokenizer = train(documents, ns.vocab_size, ns.out)
    except (ValueError, OSError) as exc:
        print(f"pcpretrain tokenizer: {exc}", file=sys.stderr)
        return 1
    print(
        f"{ns.kind} tokenizer with {tokenizer.vocab_size} pieces written to {ns.out} "
        f"({len(documents)} documents)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
