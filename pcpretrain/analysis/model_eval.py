"""``pcpretrain eval``: one merged checkpoint through held-out perplexity and lm-eval tasks, the scores
merged into ``<model dir>/eval.json``.

Every input is checked (model directory, held-out files, task names) before the model is loaded, so
a typo fails in seconds rather than after an hour of scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpretrain.analysis.eval_errors import EvalError, EvalInputError
from pcpretrain.analysis.eval_results import EVAL_FILE, write_eval
from pcpretrain.analysis.merged_model import check_model_dir, load_model, resolve_device
from pcpretrain.export import read_merged_info

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedModel

    from pcpretrain.analysis.heldout import Windowing
    from pcpretrain.data.sources import TextSource
    from pcpretrain.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class EvalRequest:
    """What to measure and how; the defaults are the command line's."""

    model_dir: Path
    heldout: Sequence[str] = ()
    tasks: Sequence[str] = ()
    include_paths: Sequence[Path] = ()
    num_fewshot: int = 0
    limit: float | None = None
    batch_size: int = 8
    seq_len: int | None = None
    max_batches: int | None = None
    text_field: str = "text"
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(frozen=True)
class HeldOutPlan:
    """The opened held-out files (by name) with the run's tokenizer and windowing."""

    windowing: Windowing
    tokenizer: Tokenizer
    sources: list[tuple[str, TextSource]]


def evaluate_model(request: EvalRequest) -> tuple[dict[str, float], Path]:
    """Measure what ``request`` asks for and merge it into the model's ``eval.json``; this call's scores
    and the file's path."""
    if not request.heldout and not request.tasks:
        raise EvalInputError("nothing to evaluate: give --heldout files and/or --tasks")
    model_dir = request.model_dir.resolve()
    check_model_dir(model_dir)
    resolve_device(request.device)
    heldout = plan_heldout(request, model_dir) if request.heldout else None
    manager = None
    if request.tasks:
        from pcpretrain.analysis.downstream import task_manager

        manager = task_manager(request.tasks, request.include_paths)
    model = load_model(model_dir, request.device, request.dtype)
    document: dict[str, Any] = {
        "model_dir": str(model_dir),
        "step": read_merged_info(model_dir).get("step"),
        "scores": {},
        "details": {},
        "settings": {},
    }
    if heldout is not None:
        add_heldout(document, request, model, heldout)
    if manager is not None:
        add_tasks(document, request, model, manager)
    write_eval(model_dir, document)
    return document["scores"], model_dir / EVAL_FILE


def plan_heldout(request: EvalRequest, model_dir: Path) -> HeldOutPlan:
    """Open every held-out file and the run's tokenizer, refusing names that would share a score."""
    from pcpretrain.analysis.heldout import open_heldout, run_windowing
    from pcpretrain.data.tokenizer import load_tokenizer

    names = [Path(path).name for path in request.heldout]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EvalInputError(f"held-out files need distinct names (scores are keyed by them): {repeated}")
    windowing = run_windowing(model_dir, request.seq_len)
    try:
        tokenizer = load_tokenizer(model_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise EvalInputError(f"held-out perplexity needs the run's tokenizer: {exc}") from exc
    sources = [
        (name, open_heldout(path, request.text_field))
        for name, path in zip(names, request.heldout, strict=True)
    ]
    return HeldOutPlan(windowing, tokenizer, sources)


def add_heldout(
    document: dict[str, Any], request: EvalRequest, model: PreTrainedModel, plan: HeldOutPlan
) -> None:
    """Each file's loss and perplexity as ``ppl/<file name>/...`` scores, its token count in the details."""
    from pcpretrain.analysis.heldout import heldout_loss

    windowing = plan.windowing
    for name, source in plan.sources:
        result = heldout_loss(
            model, plan.tokenizer, source, name, windowing, request.batch_size, request.max_batches
        )
        key = f"ppl/{name}"
        document["scores"].update({f"{key}/loss": result.loss, f"{key}/perplexity": result.perplexity})
        document["details"][key] = {
            "files": list(result.files),
            "tokens": result.tokens,
            "windows": result.windows,
            "documents": result.documents,
        }
        document["settings"][key] = {
            "seq_len": windowing.seq_len,
            "add_bos": windowing.add_bos,
            "add_eos": windowing.add_eos,
            "batch_size": request.batch_size,
            "max_batches": request.max_batches,
            "text_field": request.text_field,
            "device": request.device,
            "dtype": request.dtype,
        }


def add_tasks(
    document: dict[str, Any], request: EvalRequest, model: PreTrainedModel, manager: TaskManager
) -> None:
    """lm-eval's metrics as ``<task>/<metric>`` scores, its full results (no samples) in the details."""
    from transformers import AutoTokenizer

    from pcpretrain.analysis.downstream import flat_scores, run_tasks

    try:
        tokenizer = AutoTokenizer.from_pretrained(request.model_dir)
    except (OSError, ValueError) as exc:
        raise EvalError(
            f"{request.model_dir}: the Hugging Face tokenizer could not be loaded: {exc}"
        ) from exc
    results = run_tasks(
        model,
        tokenizer,
        request.tasks,
        manager,
        num_fewshot=request.num_fewshot,
        limit=request.limit,
        batch_size=request.batch_size,
    )
    document["scores"].update(flat_scores(results))
    document["details"]["lm_eval"] = results
    for task in results.get("results", {}):
        document["settings"][task] = {
            "num_fewshot": results.get("n-shot", {}).get(task, request.num_fewshot),
            "limit": request.limit,
            "batch_size": request.batch_size,
            "include_paths": [str(path) for path in request.include_paths],
            "device": request.device,
            "dtype": request.dtype,
            "lm_eval_version": results.get("lm_eval_version"),
        }
