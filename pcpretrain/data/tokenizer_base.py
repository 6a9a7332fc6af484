"""The interface every tokenizer kind implements, so data, checkpoints and export need not know which.

Two kinds exist: ``sentencepiece`` (a ``.model`` file, e.g. Llama-2) and ``hf`` (a Hugging Face
``tokenizer.json``, e.g. Llama-3, Qwen, GPT-NeoX). A tokenizer is identified by its
:attr:`Tokenizer.fingerprint` (what defines the ids) and re-loaded anywhere, loader workers
included, from its :attr:`Tokenizer.location` with :func:`pcpretrain.data.tokenizer.load_tokenizer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar


class Tokenizer(ABC):
    """Text <-> ids. ``encode`` never adds BOS/EOS: packing adds them (``data.add_bos``/``add_eos``)."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special and added tokens included: every id is below it."""

    @property
    @abstractmethod
    def bos_id(self) -> int | None:
        """The beginning-of-sequence id the tokenizer's own config names, or None when it has none."""

    @property
    @abstractmethod
    def eos_id(self) -> int | None:
        """The end-of-sequence id the tokenizer's own config names, or None when it has none."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Hex SHA-256 of the file that defines the ids: equal fingerprints mean equal ids."""

    @property
    @abstractmethod
    def location(self) -> Path:
        """The local file or directory it was loaded from; ``load_tokenizer(location)`` loads it again."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry (a piece or special token), or None when absent."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of one text, without BOS/EOS."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many texts, without BOS/EOS; the fast path loader workers use."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept."""

    @abstractmethod
    def save_files(self, out_dir: str | Path) -> list[Path]:
        """Write the defining files (atomically) into ``out_dir``; loading ``out_dir`` gives the same
        ids and the same fingerprint."""

    @abstractmethod
    def save_pretrained(self, out_dir: str | Path) -> list[Path]:
        """Write files so ``transformers.AutoTokenizer.from_pretrained(out_dir)`` encodes any text to
        the ids of :meth:`encode` (with ``add_special_tokens=False``)."""

    @abstractmethod
    def use_one_thread(self) -> None:
        """Encode on one thread from now on: loader and tokenize workers already run one per core, and a
        thread pool in each would oversubscribe them."""

    def require_id(self, token: str, what: str) -> int:
        """The id of ``token``, or a ValueError naming ``what`` asked for it and where the vocabulary is."""
        token_id = self.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"{what}={token!r} is not in the vocabulary of the {self.kind} tokenizer at "
                f"{self.location}; give a token that exists in it (e.g. the tokenizer's own BOS/EOS)"
            )
        return token_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.location)!r}, vocab_size={self.vocab_size})"
