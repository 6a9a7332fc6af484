"""Held-out perplexity of a merged checkpoint, computed the way training computes ``val_loss``.

A file is read through the training data sources (the first ``MAX_VALIDATION_DOCUMENTS`` rows, a
``.txt`` file as paragraphs), tokenized with the run's tokenizer (the merged directory's
``tokenizer.model``, else its ``tokenizer.json``: :func:`pcpretrain.data.tokenizer.load_tokenizer`),
packed by :func:`pcpretrain.data.validation.validation_batches` with the run's ``seq_len`` and
BOS/EOS settings (from ``pcpretrain.json``), and scored by
:func:`pcpretrain.train.loss.causal_lm_loss`, the token mean over all windows. So for a run's own
validation file the loss equals the ``val_loss`` it logged at the same step, except where:

- the run evaluated only ``trainer.eval_batches`` batches of ``trainer.micro_batch_size`` windows
  (8 x 8 by default); here every window is used unless ``max_batches`` is given (with ``batch_size``
  equal to the run's micro-batch size, the same windows are chosen);
- the run had several validation files: training packs them into one stream in file order, so the
  windows that cross from one file into the next exist only there; here each file is its own stream;
- precision: here the logits are computed in full and the cross-entropy in float32; training uses the
  chunked loss head and, on GPUs, bf16 autocast. With float32 weights on both sides the two agree
  to float rounding (about 1e-6 relative); a bf16 run's logged value differs by its bf16 error.

Exactly as in training: documents are concatenated as ``[BOS] ids [EOS]`` (markers as the run had
them) into one stream, the last partial window (fewer than ``seq_len + 1`` tokens) is dropped, each
window's first token is context only (windows overlap by one token, so ``tokens = windows * seq_len``
and only the stream's first token, the first BOS, is never a target: later BOS tokens are predicted
after the EOS before them), and empty documents add nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pcpretrain.analysis.eval_errors import EvalInputError
from pcpretrain.config import DataConfig
from pcpretrain.data.pipeline import MAX_VALIDATION_DOCUMENTS, cache_dir, head_documents
from pcpretrain.data.sources import DataSourceError, TextSource
from pcpretrain.data.tokenizer import Tokenizer
from pcpretrain.data.validation import validation_batches
from pcpretrain.export import read_merged_info
from pcpretrain.train.loss import causal_lm_loss

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class Windowing:
    """How the run cut text into windows: what makes a held-out loss comparable to its ``val_loss``."""

    seq_len: int
    add_bos: bool
    add_eos: bool


@dataclass(frozen=True)
class HeldOutResult:
    """Token-mean loss of one held-out file, with what it was measured on."""

    name: str
    files: tuple[str, ...]
    loss: float
    tokens: int
    windows: int
    documents: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def run_windowing(model_dir: Path, seq_len: int | None = None) -> Windowing:
    """The run's window settings from ``pcpretrain.json``; ``seq_len`` overrides its window length.

    A model exported elsewhere has no such file: it then needs ``seq_len`` and gets the training
    defaults for BOS/EOS.
    """
    data = read_merged_info(model_dir).get("data", {})
    chosen = seq_len if seq_len is not None else data.get("seq_len")
    if chosen is None:
        raise EvalInputError(
            f"{model_dir} has no pcpretrain.json saying the run's window length; pass --seq-len"
        )
    defaults = DataConfig()
    return Windowing(
        int(chosen), data.get("add_bos", defaults.add_bos), data.get("add_eos", defaults.add_eos)
    )


def open_heldout(path: str, text_field: str = "text") -> TextSource:
    """The file (or glob or directory) as training reads a validation file; checked now, before any model
    is loaded, so a wrong path fails in a second."""
    try:
        source = TextSource.from_files(
            [path], text_field=text_field, cache_dir=cache_dir(DataConfig()) / "datasets"
        )
        source.check()
    except DataSourceError as exc:
        raise EvalInputError(f"--heldout {path}: {exc}") from exc
    return source


@torch.inference_mode()
def heldout_loss(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    source: TextSource,
    name: str,
    windowing: Windowing,
    batch_size: int,
    max_batches: int | None = None,
) -> HeldOutResult:
    """Token-mean next-token loss of ``model`` on ``source`` (see the module docstring for what matches
    training's ``val_loss``)."""
    config = model.config
    if windowing.seq_len > getattr(config, "max_position_embeddings", windowing.seq_len):
        raise EvalInputError(
            f"seq_len {windowing.seq_len} exceeds the model's max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    if tokenizer.vocab_size > config.vocab_size:
        raise EvalInputError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model only "
            f"{config.vocab_size} embeddings"
        )
    texts = list(head_documents(source, MAX_VALIDATION_DOCUMENTS))
    try:
        batches = validation_batches(
            tokenizer.encode_batch(texts),
            seq_len=windowing.seq_len,
            bos_id=tokenizer.bos_id if windowing.add_bos else None,
            eos_id=tokenizer.eos_id if windowing.add_eos else None,
            vocab_size=tokenizer.vocab_size,
            batch_size=batch_size,
            max_batches=max_batches,
        )
    except ValueError as exc:
        raise EvalInputError(f"--heldout {name}: {exc}") from exc
    device = next(model.parameters()).device
    loss_sum, windows = 0.0, 0
    for batch in batches:
        loss = causal_lm_loss(model, batch.to(device), chunk_tokens=0)
        loss_sum += float(loss) * batch.size(0)
        windows += batch.size(0)
    return HeldOutResult(
        name=name,
        files=tuple(str(Path(source.describe_shard(i)).resolve()) for i in range(source.num_shards)),
        loss=loss_sum / windows,
        tokens=windows * windowing.seq_len,
        windows=windows,
        documents=sum(1 for text in texts if text),
    )
