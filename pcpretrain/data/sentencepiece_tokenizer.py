"""SentencePiece tokenizers (Llama-2 style ``.model`` files): load, train, and export for Hugging Face.

Training and packing work on SentencePiece ids; :meth:`SentencePieceTokenizer.save_pretrained` writes
the same vocabulary as a Hugging Face ``LlamaTokenizer``, so a merged checkpoint is usable with
``transformers.AutoTokenizer`` alone. The fingerprint is the SHA-256 of the ``.model`` file, as it
always was, so older token shards and checkpoints stay valid.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentencepiece as spm

from pcpretrain.data.tokenizer_base import Tokenizer
from pcpretrain.files import atomic_write_bytes, sha256_file

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds and only export needs it
    from transformers import LlamaTokenizer

HF_MODEL_FILE = "tokenizer.model"

# Llama-style BPE settings. Everything that changes the trained model is here, and all of it is
# part of the cache key in `load_or_train`.
TRAINER_SETTINGS: dict[str, Any] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "add_dummy_prefix": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "character_coverage": 0.99995,
    "max_sentencepiece_length": 16,
    "max_sentence_length": 1 << 16,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    # The trained model depends on the thread count, so it is pinned; one thread is fast enough for
    # in-memory corpora of a few MB.
    "num_threads": 1,
    "hard_vocab_limit": True,
}


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model file. Pickles as its path: worker processes re-load the file."""

    kind = "sentencepiece"

    def __init__(self, model_path: str | Path, processor: spm.SentencePieceProcessor | None = None) -> None:
        self._model_path = Path(model_path)
        self._sp = processor if processor is not None else _load_processor(self._model_path)
        self._fingerprint: str | None = None
        self._threads = -1  # SentencePiece's default: every core

    @classmethod
    def from_path(cls, path: str | Path) -> SentencePieceTokenizer:
        """A ``.model`` file, or a directory that carries one as ``tokenizer.model``."""
        path = Path(path)
        if path.is_dir():
            path = path / HF_MODEL_FILE
        return cls(path)

    def __getstate__(self) -> dict[str, Any]:
        return {"model_path": self._model_path, "fingerprint": self._fingerprint, "threads": self._threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._model_path = state["model_path"]
        self._fingerprint = state["fingerprint"]
        self._threads = state.get("threads", -1)
        self._sp = _load_processor(self._model_path)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        return _optional_id(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return _optional_id(self._sp.eos_id())

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = sha256_file(self._model_path)
        return self._fingerprint

    @property
    def location(self) -> Path:
        return self._model_path

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        """The underlying SentencePiece processor, for anything not wrapped here."""
        return self._sp

    def token_to_id(self, token: str) -> int | None:
        token_id = self._sp.piece_to_id(token)
        # SentencePiece maps unknown pieces to unk_id; only the unknown piece itself may have that id.
        if token_id == self._sp.unk_id() and token != self._sp.id_to_piece(token_id):
            return None
        return token_id

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=self._threads)

    def use_one_thread(self) -> None:
        self._threads = 1

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def save_files(self, out_dir: str | Path) -> list[Path]:
        """``tokenizer.model``, byte for byte."""
        target = Path(out_dir) / HF_MODEL_FILE
        if not target.exists() or not os.path.samefile(target, self._model_path):
            atomic_write_bytes(target, self._model_path.read_bytes())
        return [target]

    def save_pretrained(self, out_dir: str | Path) -> list[Path]:
        """Write Hugging Face tokenizer files so `AutoTokenizer.from_pretrained(out_dir)` works.

        Writes `tokenizer.json` and `tokenizer_config.json` (a `LlamaTokenizer`, as transformers 5
        saves it) plus a copy of the SentencePiece `tokenizer.model`. The BPE merges are ordered by
        SentencePiece piece score, not by id, so whitespace-only pieces (score -1e9 in Llama models)
        merge last as in SentencePiece. Ids then agree with `encode` for text that does not start
        with a space; for text that does, the Hugging Face Llama pre-tokenizer omits the dummy
        prefix that SentencePiece adds (a transformers behaviour, the same for the Hub's Llama-2).
        Meant for BPE models (those trained here, Llama-2); a unigram model would need other merges.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [Path(name) for name in self.to_hf().save_pretrained(str(out_dir))]
        return sorted({*written, *self.save_files(out_dir)})

    def to_hf(self) -> LlamaTokenizer:
        """The equivalent `transformers.LlamaTokenizer` (BOS added by default, no EOS, no pad)."""
        from transformers import LlamaTokenizer

        vocab, merges = bpe_vocab_and_merges(self._sp)
        return LlamaTokenizer(
            vocab=vocab,
            merges=merges,
            unk_token=self._sp.id_to_piece(self._sp.unk_id()),
            bos_token=_piece_or_none(self._sp, self.bos_id),
            eos_token=_piece_or_none(self._sp, self.eos_id),
            add_bos_token=self.bos_id is not None,
            add_eos_token=False,
            legacy=False,
            add_prefix_space=self._add_dummy_prefix(),
        )

    def _add_dummy_prefix(self) -> bool:
        """Whether the model prepends a space ("▁") to each text (observed, so protobuf is not needed)."""
        return self._sp.encode("a", out_type=str)[0].startswith("\u2581")


def bpe_vocab_and_merges(
    processor: spm.SentencePieceProcessor,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and score-ordered BPE merges equivalent to a SentencePiece BPE model.

    SentencePiece merges the adjacent pair whose joined piece has the highest score; a Hugging Face
    BPE applies the lowest-ranked merge. Ranking merges by descending piece score (ties by id)
    reproduces SentencePiece's order. Control, unknown and byte pieces never take part in merges.
    """
    size = processor.get_piece_size()
    vocab = {processor.id_to_piece(i): i for i in range(size)}
    mergeable = [
        i
        for i in range(size)
        if not (processor.is_control(i) or processor.is_unknown(i) or processor.is_byte(i))
    ]
    mergeable_pieces = {processor.id_to_piece(i) for i in mergeable}
    merges: list[tuple[str, str]] = []
    for i in sorted(mergeable, key=lambda i: (-processor.get_score(i), i)):
        piece = processor.id_to_piece(i)
        splits = [
            (piece[:k], piece[k:])
            for k in range(1, len(piece))
            if piece[:k] in mergeable_pieces and piece[k:] in mergeable_pieces
        ]
        merges.extend(sorted(splits, key=lambda pair: (vocab[pair[0]], vocab[pair[1]])))
    return vocab, merges


def train_sentencepiece(
    documents: Sequence[str], vocab_size: int, out_path: str | Path
) -> SentencePieceTokenizer:
    """Train a Llama-style SentencePiece BPE model on `documents` and write it to `out_path`.

    Documents are fed line by line (as SentencePiece expects sentences); newlines are then covered
    by byte fallback, exactly as in Llama-2. Training is deterministic for fixed input and settings.
    """
    out_path = Path(out_path)
    lines = [line for doc in documents for line in doc.splitlines() if line.strip()]
    if not lines:
        raise ValueError("cannot train a tokenizer: the documents contain no non-blank text")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            minloglevel=2,
            **TRAINER_SETTINGS,
        )
    except RuntimeError as err:
        raise ValueError(
            f"SentencePiece training with vocab_size={vocab_size} failed on {len(lines)} lines "
            f"({sum(map(len, lines))} characters): {err}"
        ) from err
    atomic_write_bytes(out_path, model.getvalue())
    return SentencePieceTokenizer(out_path)


def _load_processor(path: Path) -> spm.SentencePieceProcessor:
    if not path.is_file():
        raise FileNotFoundError(f"SentencePiece tokenizer model not found: {path}")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise ValueError(f"{path} is not a SentencePiece model file ({err})") from err
    return processor


def _optional_id(token_id: int) -> int | None:
    return token_id if token_id >= 0 else None


def _piece_or_none(processor: spm.SentencePieceProcessor, token_id: int | None) -> str | None:
    return None if token_id is None else processor.id_to_piece(token_id)
