"""lm-evaluation-harness tasks on a merged checkpoint, through lm-eval's Python API.

lm-eval is an optional extra (``pip install -e ".[eval]"``), imported only here and only when tasks
are asked for. The model is the already-loaded ``transformers`` Llama wrapped in lm-eval's ``HFLM``
with the directory's Hugging Face tokenizer, which adds the BOS the run trained with.

Task lookup: lm-eval's index of its built-in tasks takes about 10 s to build, so when every requested
name is a task (not a group or tag) found under ``--include-path``, only those directories are
indexed; a local task then also wins over a built-in one of the same name, as in lm-eval itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpretrain.analysis.eval_errors import EvalError, EvalInputError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LM_EVAL_MISSING = 'lm-eval is not installed; install the extra: pip install -e ".[eval]"'
OFFLINE_HINT = (
    "the task's data must be in the local Hugging Face cache first (download it once where there is "
    "network, then run with HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1), or use a local task YAML with "
    "--include-path"
)


def task_manager(names: Sequence[str], include_paths: Sequence[Path] = ()) -> TaskManager:
    """lm-eval's task index for ``names``; unknown names are refused with the closest known ones."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise EvalError(LM_EVAL_MISSING) from exc
    for path in include_paths:
        if not path.is_dir():
            raise EvalInputError(f"--include-path {path} is not a directory")
    paths = [str(path) for path in include_paths]
    wanted = [name for name in names if not Path(name).is_file()]  # lm-eval also takes YAML paths
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(name in local.all_subtasks for name in wanted):
            return local
    manager = TaskManager(include_path=paths or None)
    unknown = [name for name in wanted if name not in manager.all_tasks]
    if unknown:
        raise EvalInputError("; ".join(_unknown_task(name, manager.all_tasks) for name in unknown))
    return manager


def _unknown_task(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    suggestion = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown lm-eval task {name!r}{suggestion}; `lm-eval ls tasks` lists them"


def run_tasks(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    names: Sequence[str],
    manager: TaskManager,
    *,
    num_fewshot: int = 0,
    limit: float | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """lm-eval's results for ``names`` (0-shot unless asked), without the per-sample records."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise EvalError(LM_EVAL_MISSING) from exc
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(names),
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            task_manager=manager,
            log_samples=False,
        )
    except Exception as exc:
        if _is_network_error(exc):
            raise EvalError(f"{_root_message(exc)}: {OFFLINE_HINT}") from exc
        raise
    results.pop("samples", None)
    return results


def flat_scores(results: dict[str, Any]) -> dict[str, float]:
    """``<task>/<metric>`` -> value for every metric of every task and group (``<task>/<metric>/<filter>``
    for a filter other than lm-eval's ``none``); standard errors stay in the full results."""
    scores: dict[str, float] = {}
    for section in ("results", "groups"):
        for task, metrics in results.get(section, {}).items():
            for key, value in metrics.items():
                metric, comma, filter_name = key.partition(",")
                if not comma or metric.endswith("_stderr") or not _is_number(value):
                    continue
                suffix = "" if filter_name == "none" else f"/{filter_name}"
                scores[f"{task}/{metric}{suffix}"] = float(value)
    return scores


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the Hub or a download site could not be reached", from whichever of the
    HTTP libraries is installed."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        kinds += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:
        pass
    try:
        import httpx

        kinds.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        import requests

        kinds += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(kinds)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_network_error(exc: BaseException) -> bool:
    kinds = _network_errors()
    return any(isinstance(link, kinds) for link in _chain(exc))


def _root_message(exc: BaseException) -> str:
    """The message of the first network error in the chain (it names the dataset)."""
    kinds = _network_errors()
    link = next(link for link in _chain(exc) if isinstance(link, kinds))
    return f"{type(link).__name__}: {link}"
