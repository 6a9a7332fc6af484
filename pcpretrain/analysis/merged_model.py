"""Open a merged checkpoint for evaluation as a plain ``transformers`` Llama, with no training code.

Loading through ``AutoModelForCausalLM`` (not pcpretrain's model class) keeps evaluation an
independent check of the export: what is scored is what anyone downloading the directory gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pcpretrain.analysis.eval_errors import EvalError, EvalInputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# Weight dtypes by their torch names; torch is imported only when a model is loaded.
DTYPES = ("float32", "bfloat16", "float16")
HF_CONFIG = "config.json"


def check_model_dir(model_dir: Path) -> None:
    """Refuse, naming the fix, a path that is not a Hugging Face model directory."""
    if not model_dir.is_dir():
        raise EvalInputError(f"{model_dir} is not a directory; pass a merged checkpoint directory")
    if (model_dir / HF_CONFIG).is_file():
        return
    hint = (
        f"; it looks like an unmerged checkpoint: merge it with `pcpretrain export {model_dir} <out dir>`"
        if (model_dir / "trainer_state.json").is_file()
        else " (e.g. runs/<run>/checkpoints/step_XXXXXXXX-merged)"
    )
    raise EvalInputError(f"{model_dir} is not a model directory: it has no {HF_CONFIG}{hint}")


def resolve_device(device: str) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU; anything else as torch spells it."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise EvalInputError(f"--device {device!r} is not a torch device ({exc})") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise EvalInputError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    return chosen


def load_model(model_dir: Path, device: str, dtype: str) -> PreTrainedModel:
    """The merged Llama in ``dtype`` on ``device``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_dir(model_dir)
    target = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise EvalError(f"{model_dir}: the model could not be loaded: {exc}") from exc
    return model.to(target).eval()
