"""Hugging Face ``tokenizer.json`` tokenizers (Llama-3, Mistral-Nemo, Qwen, GPT-NeoX, OLMo, BPE trained here).

Encoding uses the ``tokenizers`` library directly (``transformers`` takes seconds to import and loader
workers only need ids). BOS/EOS come from ``tokenizer_config.json`` (``bos_token``/``eos_token``, a
string or ``{"content": ...}``), else ``special_tokens_map.json``; a tokenizer without BOS (GPT-NeoX,
Qwen) has ``bos_id`` None. The fingerprint is the SHA-256 of ``tokenizer.json``'s bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from pcpretrain.data.tokenizer_base import Tokenizer
from pcpretrain.files import atomic_write_bytes, atomic_write_text

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# The files that define a Hugging Face tokenizer here, in the order they are looked for.
HF_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
# transformers' generic class: it uses tokenizer.json as it is (a model-specific class such as
# LlamaTokenizer may rebuild the pipeline from vocabulary and merges and give other ids).
GENERIC_TOKENIZER_CLASS = "TokenizersBackend"


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` plus the config beside it. Pickles as its paths; the backend loads lazily."""

    kind = "hf"

    def __init__(self, json_path: str | Path, location: str | Path | None = None) -> None:
        self._json_path = Path(json_path)
        self._location = Path(location) if location is not None else self._json_path
        if not self._json_path.is_file():
            raise FileNotFoundError(f"Hugging Face tokenizer file not found: {self._json_path}")
        data = self._json_path.read_bytes()
        self._fingerprint = hashlib.sha256(data).hexdigest()
        # Loaded now (a malformed file is reported here, where it is named); pickling drops it.
        self._backend: Backend | None = _parse_backend(data, self._json_path)
        # One past the largest id: added tokens may leave gaps, so a count could fall short.
        self._vocab_size = 1 + max(self._backend.get_vocab(with_added_tokens=True).values(), default=-1)
        self._config = _special_tokens_config(self._json_path.parent)
        self._bos_id = self._config_token_id("bos_token")
        self._eos_id = self._config_token_id("eos_token")

    @classmethod
    def from_path(cls, path: str | Path) -> HFTokenizer:
        """A directory with ``tokenizer.json``, or the ``tokenizer.json`` file itself."""
        path = Path(path)
        return cls(path / TOKENIZER_JSON if path.is_dir() else path, path)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_backend": None}

    @property
    def backend(self) -> Backend:
        """The ``tokenizers.Tokenizer`` (re-read from the file after unpickling, in loader workers)."""
        if self._backend is None:
            self._backend = _parse_backend(self._json_path.read_bytes(), self._json_path)
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def location(self) -> Path:
        return self._location

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def use_one_thread(self) -> None:
        # The tokenizers library reads this at every batch call; it applies to this whole process.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def save_files(self, out_dir: str | Path) -> list[Path]:
        """``tokenizer.json`` byte for byte, plus ``tokenizer_config.json``/``special_tokens_map.json``
        when they are present beside it."""
        out_dir = Path(out_dir)
        written = []
        for name in HF_FILES:
            source = self._json_path if name == TOKENIZER_JSON else self._json_path.parent / name
            if source.is_file() and source.resolve() != (out_dir / name).resolve():
                atomic_write_bytes(out_dir / name, source.read_bytes())
            if source.is_file():
                written.append(out_dir / name)
        return written

    def save_pretrained(self, out_dir: str | Path) -> list[Path]:
        """:meth:`save_files`, with ``tokenizer_config.json`` naming transformers' generic class (which
        applies ``tokenizer.json`` as it is) and this tokenizer's BOS/EOS."""
        out_dir = Path(out_dir)
        written = self.save_files(out_dir)
        config = {**self._config, "tokenizer_class": GENERIC_TOKENIZER_CLASS}
        for key, token_id in (("bos_token", self.bos_id), ("eos_token", self.eos_id)):
            if token_id is not None:
                config[key] = self.backend.id_to_token(token_id)
        atomic_write_text(out_dir / TOKENIZER_CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return sorted({*written, out_dir / TOKENIZER_CONFIG})

    def _config_token_id(self, key: str) -> int | None:
        token = _token_content(self._config.get(key))
        return None if token is None else self.require_id(token, f"{TOKENIZER_CONFIG} {key}")


def _parse_backend(data: bytes, path: Path) -> Backend:
    """The tokenizer in ``data``, without truncation or padding (documents are packed whole)."""
    try:
        backend = Backend.from_str(data.decode("utf-8"))
    except Exception as err:  # the Rust library raises plain Exception for a malformed file
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({err})") from err
    backend.no_truncation()
    backend.no_padding()
    return backend


def _special_tokens_config(directory: Path) -> dict[str, Any]:
    """``tokenizer_config.json`` with ``bos_token``/``eos_token`` filled from ``special_tokens_map.json``
    where the config lacks them."""
    config = _read_json(directory / TOKENIZER_CONFIG)
    special = _read_json(directory / SPECIAL_TOKENS_MAP)
    for key in ("bos_token", "eos_token"):
        if config.get(key) is None and special.get(key) is not None:
            config[key] = special[key]
    return config


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _token_content(value: Any) -> str | None:
    """A special token as configs write it: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None
