"""What one run directory says about its run, read from the files training (and evaluation) leave there.

Only ``config.yaml``, ``metrics.jsonl`` and the ``eval.json`` of the newest merged checkpoint are read,
so this works on a copy of the outputs, without torch, while the run is still training.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pcpretrain.analysis.eval_results import read_scores

# The names training writes (pcpretrain.train.run, pcpretrain.checkpoint), repeated here so that
# reading a run does not import torch.
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MERGED_DIR = re.compile(r"^step_(\d{8})-merged$")
# The global modified condition number the spectral monitor logs.
GMCN_KEY = "spectral/gmcn"


@dataclass(frozen=True)
class RunSummary:
    """What one run reached so far; ``None`` (or empty) where it has not logged the value yet."""

    path: Path
    config: dict[str, Any]
    optimizer: str
    degree: int
    lr: float
    steps: int
    max_steps: int | None
    final_train_loss: float | None
    final_val_loss: float | None
    gmcn: float | None
    tokens: int | None
    tokens_per_s: float | None
    eval_scores: dict[str, float] = field(default_factory=dict)
    val_curve: tuple[tuple[float, float], ...] = ()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


def is_run_dir(path: Path) -> bool:
    """A run directory is recognised by the two files training writes first."""
    return (path / CONFIG_FILE).is_file() and (path / METRICS_FILE).is_file()


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Each path is a run directory or a directory of runs; every run once, in the order given.

    A path that holds no run is an error naming it, so a typo does not shrink a comparison silently.
    """
    if not paths:
        raise ValueError("no paths given; name run directories or directories of runs")
    runs: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        for run in _runs_in(path):
            if run.resolve() not in seen:
                seen.add(run.resolve())
                runs.append(run)
    return runs


def _runs_in(path: Path) -> list[Path]:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if is_run_dir(path):
        return [path]
    runs = sorted(child for child in path.iterdir() if child.is_dir() and is_run_dir(child))
    if not runs:
        raise ValueError(
            f"{path}: no runs found; a run directory holds {CONFIG_FILE} and {METRICS_FILE}, "
            "a sweep directory holds run directories"
        )
    return runs


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a last line still being written by a running run is skipped."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: not a JSON record ({exc})") from exc
    return records


def flat_config(path: Path) -> dict[str, Any]:
    """The config as ``{"optimizer.lr": 0.003, ...}``; lists stay values, so one key is one setting."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{path}: not a mapping of config keys")
    return dict(_flatten(OmegaConf.to_container(cfg, resolve=False), ""))


def _flatten(node: Any, prefix: str) -> list[tuple[str, Any]]:
    if not isinstance(node, dict) or (prefix and not node):
        return [(prefix.rstrip("."), node)]
    return [pair for key, value in node.items() for pair in _flatten(value, f"{prefix}{key}.")]


def eval_scores(run_dir: Path) -> dict[str, float]:
    """The scores ``pcpretrain eval`` left in the run's newest merged checkpoint; empty while that one
    has none (an older checkpoint's scores would describe other weights)."""
    merged = [p for p in (run_dir / CHECKPOINTS_DIR).glob("step_*-merged") if MERGED_DIR.match(p.name)]
    return read_scores(max(merged, key=lambda p: p.name)) if merged else {}


def _required(config: dict[str, Any], key: str, path: Path) -> Any:
    if config.get(key) is None:
        raise ValueError(f"{path}: has no {key}; is it a pcpretrain run config?")
    return config[key]


def summarize_run(run_dir: Path) -> RunSummary:
    """The run's settings and results so far.

    The final train loss is the last logged one, as the final validation loss and GMCN are;
    ``tokens_per_s`` is the median, robust to slow first and evaluation steps.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    config = flat_config(config_path)
    records = read_records(run_dir / METRICS_FILE)
    speeds = _values(records, "tokens_per_s")
    tokens = _last(records, "tokens")
    curve = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None and "tokens" in r]
    return RunSummary(
        path=run_dir,
        config=config,
        optimizer=str(_required(config, "optimizer.name", config_path)),
        degree=int(_required(config, "pc.degree", config_path)),
        lr=float(_required(config, "optimizer.lr", config_path)),
        steps=max((int(record.get("step", 0)) for record in records), default=0),
        max_steps=config.get("trainer.max_steps"),
        final_train_loss=_last(records, "loss"),
        final_val_loss=_last(records, "val_loss"),
        gmcn=_last(records, GMCN_KEY),
        tokens=None if tokens is None else int(tokens),
        tokens_per_s=statistics.median(speeds) if speeds else None,
        eval_scores=eval_scores(run_dir),
        val_curve=tuple(curve),
    )


def _values(records: Sequence[dict[str, Any]], key: str) -> list[Any]:
    return [record[key] for record in records if record.get(key) is not None]


def _last(records: Sequence[dict[str, Any]], key: str) -> Any:
    values = _values(records, key)
    return values[-1] if values else None
