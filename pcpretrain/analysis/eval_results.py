"""``eval.json`` beside a merged checkpoint: what ``pcpretrain eval`` measured, accumulated over calls.

The document is ``{"model_dir", "step", "scores", "details", "settings"}``. ``scores`` is a flat
name -> float mapping (``<task>/<metric>``, ``ppl/<file>/loss``, ``ppl/<file>/perplexity``) that other
tools read without knowing how each score was made; ``details`` and ``settings`` are keyed by the
same task or ``ppl/<file>`` names, so each score keeps its provenance when later calls add others.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcpretrain.files import atomic_write_text

EVAL_FILE = "eval.json"

log = logging.getLogger(__name__)


def read_eval(model_dir: Path) -> dict[str, Any]:
    """The model's ``eval.json``; empty when it has none yet."""
    path = Path(model_dir) / EVAL_FILE
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it and evaluate again") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(document).__name__}")
    return document


def read_scores(model_dir: Path) -> dict[str, float]:
    """The flat ``scores`` of the model's ``eval.json`` (empty without one), for comparisons across runs."""
    scores = read_eval(model_dir).get("scores", {})
    return {name: float(value) for name, value in scores.items() if isinstance(value, (int, float))}


def merge_documents(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` laid over ``old`` key by key at every depth, so earlier calls' scores and details stay.

    A document for another training step describes other weights (the directory was re-exported),
    so it is replaced rather than mixed.
    """
    if old and old.get("step") != new.get("step"):
        log.warning(
            "eval.json was for step %s, the model is at step %s: starting afresh",
            old.get("step"),
            new.get("step"),
        )
        old = {}
    return _merge(old, new)


def _merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_eval(model_dir: Path, new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``new`` into the model's ``eval.json`` and replace the file atomically; the merged document."""
    document = merge_documents(read_eval(model_dir), new)
    text = json.dumps(document, indent=2, sort_keys=True, default=_jsonable)
    atomic_write_text(Path(model_dir) / EVAL_FILE, text + "\n")
    return document


def _jsonable(value: Any) -> Any:
    """What lm-eval's results hold beyond JSON: numpy values, sets, and objects kept by their text."""
    if callable(getattr(value, "tolist", None)):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def scores_table(scores: Mapping[str, float]) -> str:
    """The scores as two aligned columns, sorted by name."""
    from pcpretrain.analysis import text_table

    rows = [[name, _format(value)] for name, value in sorted(scores.items())]
    return text_table(["score", "value"], rows, right=[False, True])


def _format(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
