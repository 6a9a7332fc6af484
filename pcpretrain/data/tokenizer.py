"""Tokenizers: load any kind from a path or Hub id, train one (cached), and the common interface.

:func:`load_tokenizer` is the one entry point for a given tokenizer: a SentencePiece ``.model`` file;
a directory (``tokenizer.model`` inside -> SentencePiece, as Llama-2 ships; else ``tokenizer.json``
-> Hugging Face); a ``tokenizer.json`` file; or a Hub id ``org/name``, whose tokenizer files alone are
fetched into the Hugging Face cache. :func:`load_or_train` trains a ``sentencepiece`` or byte-level
``bpe`` tokenizer on a corpus once and caches it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import sentencepiece as spm
import tokenizers

from pcpretrain.choices import TOKENIZER_KINDS, looks_like_hub_id
from pcpretrain.data.bpe_training import BPE_SETTINGS, train_bpe
from pcpretrain.data.hf_tokenizer import HF_FILES, TOKENIZER_JSON, HFTokenizer
from pcpretrain.data.sentencepiece_tokenizer import (
    HF_MODEL_FILE,
    TRAINER_SETTINGS,
    SentencePieceTokenizer,
    bpe_vocab_and_merges,
    train_sentencepiece,
)
from pcpretrain.data.tokenizer_base import Tokenizer

__all__ = [
    "HF_MODEL_FILE",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "bpe_vocab_and_merges",
    "corpus_fingerprint",
    "load_or_train",
    "load_tokenizer",
    "tokenizer_cache_key",
    "train_bpe",
    "train_sentencepiece",
]

# What a Hub download fetches: the files either kind is loaded from, nothing else.
HUB_TOKENIZER_FILES = [HF_MODEL_FILE, *HF_FILES]
EXPECTED = "a SentencePiece .model file, a tokenizer.json, a directory holding either, or a Hub id org/name"


def load_tokenizer(path_or_hub_id: str | Path) -> Tokenizer:
    """The tokenizer at a local path, or a Hub repository's (downloaded once into the HF cache)."""
    path = Path(path_or_hub_id).expanduser()
    if not path.exists():
        if looks_like_hub_id(str(path_or_hub_id)):
            return load_tokenizer(download_tokenizer(str(path_or_hub_id)))
        raise FileNotFoundError(f"tokenizer not found: {path} does not exist (expected {EXPECTED})")
    if path.is_dir():
        if (path / HF_MODEL_FILE).is_file():
            return SentencePieceTokenizer.from_path(path)
        if (path / TOKENIZER_JSON).is_file():
            return HFTokenizer.from_path(path)
        raise ValueError(
            f"{path} is a directory without {HF_MODEL_FILE} or {TOKENIZER_JSON} (expected {EXPECTED})"
        )
    if path.suffix == ".json":
        return HFTokenizer.from_path(path)
    return SentencePieceTokenizer.from_path(path)


def download_tokenizer(hub_id: str) -> Path:
    """Fetch only the tokenizer files of Hub repository ``hub_id``; the local snapshot directory."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        snapshot = Path(snapshot_download(hub_id, allow_patterns=HUB_TOKENIZER_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, ValueError) as err:
        raise FileNotFoundError(
            f"could not fetch the tokenizer of Hub repository {hub_id!r} ({type(err).__name__}: {err}); "
            f"download it where the network is reachable (`hf download {hub_id} --include 'tokenizer*'`) "
            "or give a local path to its tokenizer file or directory"
        ) from err
    if not any((snapshot / name).is_file() for name in (HF_MODEL_FILE, TOKENIZER_JSON)):
        raise FileNotFoundError(
            f"Hub repository {hub_id!r} has neither {HF_MODEL_FILE} nor {TOKENIZER_JSON} "
            f"(looked in {snapshot})"
        )
    return snapshot


def corpus_fingerprint(documents: Sequence[str]) -> str:
    """SHA-256 over the documents, length-prefixed so that document boundaries count."""
    digest = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def tokenizer_cache_key(documents: Sequence[str], vocab_size: int, kind: str = "sentencepiece") -> str:
    """Hash of everything that determines the trained tokenizer: corpus, size, kind, settings, library.

    The SentencePiece key is unchanged from before there were two kinds, so existing caches still hit.
    """
    corpus = corpus_fingerprint(documents)
    if kind == "sentencepiece":
        settings = sorted(TRAINER_SETTINGS.items())
        material = f"{corpus}|{vocab_size}|{settings}|sentencepiece={spm.__version__}"
    else:
        settings = sorted(BPE_SETTINGS.items())
        material = f"{corpus}|{vocab_size}|kind={kind}|{settings}|tokenizers={tokenizers.__version__}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def load_or_train(
    documents_fn: Callable[[], Sequence[str]],
    vocab_size: int,
    cache_dir: str | Path,
    kind: str = "sentencepiece",
) -> Tokenizer:
    """The ``kind`` tokenizer trained on this corpus, from ``cache_dir`` or trained and cached there.

    The documents are always read (to hash them); only the training is skipped on a cache hit.
    Concurrent callers may both train, but each writes atomically the identical files.
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    documents = documents_fn()
    key = tokenizer_cache_key(documents, vocab_size, kind)
    if kind == "sentencepiece":
        path = Path(cache_dir) / f"spm-bpe-{vocab_size}-{key[:16]}.model"
        return load_tokenizer(path) if path.is_file() else train_sentencepiece(documents, vocab_size, path)
    directory = Path(cache_dir) / f"byte-bpe-{vocab_size}-{key[:16]}"
    if (directory / TOKENIZER_JSON).is_file():
        return load_tokenizer(directory)
    return train_bpe(documents, vocab_size, directory)
