"""SentencePiece tokenizer: load, train (Llama-style BPE), cache, and export for Hugging Face.

Training and packing work on SentencePiece ids; `Tokenizer.save_pretrained` writes the same
vocabulary as a Hugging Face `LlamaTokenizer`, so a merged checkpoint is usable with
`transformers.AutoTokenizer` alone.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentencepiece as spm

from pcpretrain.files import atomic_write_bytes

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


class Tokenizer:
    """A loaded SentencePiece model plus the path it came from (needed to export or copy it)."""

    def __init__(self, processor: spm.SentencePieceProcessor, model_path: Path) -> None:
        self._sp = processor
        self._model_path = Path(model_path)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a SentencePiece `.model` file, or a Hugging Face tokenizer directory that carries one.

        Llama-family tokenizer directories ship their SentencePiece model as `tokenizer.model`; a
        directory without one (a `tokenizer.json`-only BPE) is refused with a clear message.
        """
        path = Path(path)
        if path.is_dir():
            if not (path / HF_MODEL_FILE).is_file():
                raise ValueError(
                    f"{path} is a tokenizer directory without {HF_MODEL_FILE}; pcpretrain needs a "
                    "SentencePiece model (Llama-family directories include one)"
                )
            path = path / HF_MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(model_file=str(path))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{path} is not a SentencePiece model file ({err})") from err
        return cls(processor, path)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None when the model has none."""
        return _optional_id(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token, or None when the model has none."""
        return _optional_id(self._sp.eos_id())

    @property
    def model_path(self) -> Path:
        return self._model_path

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        """The underlying SentencePiece processor, for anything not wrapped here."""
        return self._sp

    def encode(self, text: str) -> list[int]:
        """Ids of one text, without BOS/EOS (packing adds them)."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many texts, without BOS/EOS (packing adds them)."""
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

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
        hf_tokenizer = self.to_hf()
        written = [Path(name) for name in hf_tokenizer.save_pretrained(str(out_dir))]
        model_copy = out_dir / HF_MODEL_FILE
        if not model_copy.exists() or not os.path.samefile(model_copy, self._model_path):
            _copy_atomic(self._model_path, model_copy)
        return sorted({*written, model_copy})

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


def train_sentencepiece(documents: Sequence[str], vocab_size: int, out_path: str | Path) -> Tokenizer:
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
    return Tokenizer.load(out_path)


def corpus_fingerprint(documents: Sequence[str]) -> str:
    """SHA-256 over the documents, length-prefixed so that document boundaries count."""
    digest = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def tokenizer_cache_key(documents: Sequence[str], vocab_size: int) -> str:
    """Hash of everything that determines the trained model: corpus, vocab size, settings, library."""
    settings = sorted(TRAINER_SETTINGS.items())
    material = f"{corpus_fingerprint(documents)}|{vocab_size}|{settings}|sentencepiece={spm.__version__}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def load_or_train(
    documents_fn: Callable[[], Sequence[str]], vocab_size: int, cache_dir: str | Path
) -> Tokenizer:
    """Load the tokenizer trained on this corpus from `cache_dir`, training and caching it if absent.

    The documents are always read (to hash them); only the training is skipped on a cache hit.
    Concurrent callers may both train, but each writes atomically the identical model.
    """
    documents = documents_fn()
    key = tokenizer_cache_key(documents, vocab_size)
    path = Path(cache_dir) / f"spm-bpe-{vocab_size}-{key[:16]}.model"
    if path.is_file():
        return Tokenizer.load(path)
    return train_sentencepiece(documents, vocab_size, path)


def _optional_id(token_id: int) -> int | None:
    return token_id if token_id >= 0 else None


def _piece_or_none(processor: spm.SentencePieceProcessor, token_id: int | None) -> str | None:
    return None if token_id is None else processor.id_to_piece(token_id)


def _copy_atomic(src: Path, dst: Path) -> None:
    with src.open("rb") as handle:
        atomic_write_bytes(dst, handle.read())
