"""Pre-tokenized corpora on disk: a directory of token shards, memory-mapped on read.

Layout of a token-shards directory (format version 2)::

    meta.json            description of the corpus (below); written last
    tokenizer/           the tokenizer the ids came from, as its ``save_files`` wrote it
                         (``tokenizer.model`` for SentencePiece; ``tokenizer.json`` and its config
                         files for a Hugging Face tokenizer); ``load_tokenizer`` loads it
    tokenize.json        only from ``pcpretrain tokenize``: the settings it ran with (source,
                         input shards, tokenizer), checked when an interrupted run is continued
    shard_00000.bin      token ids of shard 0
    shard_00000.idx      document offsets of shard 0
    shard_00001.bin      ...

Version 1 directories (written before Hugging Face tokenizers were supported) hold the
SentencePiece model as ``tokenizer.model`` at the top instead of ``tokenizer/``, and their meta.json
has neither ``tokenizer_kind`` nor ``tokenizer_files``; they still read, as SentencePiece.

Shard k is named ``shard_{k:05d}`` (five digits, zero-padded), k = 0 .. num_shards - 1.

``shard_{k:05d}.bin``
    Raw little-endian token ids, no header: ``uint16`` when ``vocab_size <= 65536``, else
    ``uint32``. Documents are concatenated with NO BOS/EOS markers; those are added at packing
    time, so the same shards serve any bos/eos setting. The file holds exactly
    ``tokens * itemsize`` bytes.

``shard_{k:05d}.idx``
    Raw little-endian ``int64`` offsets, no header, ``documents + 1`` of them. Document d of the
    shard is ``tokens[offsets[d]:offsets[d + 1]]``; ``offsets[0] == 0``, ``offsets[-1]`` equals
    the number of tokens in the ``.bin``, and the offsets never decrease. Empty documents are not
    stored, so in shards written by pcpretrain they strictly increase.

``meta.json``
    A JSON object::

        {
          "format": "pcpretrain-token-shards",
          "version": 2,
          "dtype": "uint16" | "uint32",
          "vocab_size": <int>,
          "tokenizer_kind": "sentencepiece" | "hf",
          "tokenizer_sha256": <the tokenizer's fingerprint: what defines its ids>,
          "tokenizer_files": {"tokenizer/<file>": <hex sha256 of the file>, ...},
          "num_shards": <int>,
          "shards": [{"name": "shard_00000", "documents": <int>, "tokens": <int>}, ...],
          "source": <free text: where the text came from>
        }

    ``shards`` lists every shard in order, ``num_shards == len(shards)``. For SentencePiece the
    fingerprint is the sha256 of ``tokenizer.model``, as version 1 recorded it.

A directory is complete exactly when it has ``meta.json``: writers build everything beside the
target (:class:`~pcpretrain.data.token_shard_writer.TokenShardWriter` in a hidden
``.<name>.tmp-write-*``, ``pcpretrain tokenize`` in a visible ``<name>.partial`` it can continue
after a crash), write ``meta.json`` last and rename the directory into place.

:class:`TokenShards` validates every listed file against ``meta.json`` when it is opened, so a
truncated or mismatched corpus fails before training starts rather than mid-run.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from pcpretrain.data.packing import token_dtype
from pcpretrain.files import sha256_file

if TYPE_CHECKING:
    from pcpretrain.data.tokenizer_base import Tokenizer

FORMAT_NAME = "pcpretrain-token-shards"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
# Where version 1 kept its (always SentencePiece) tokenizer model.
V1_TOKENIZER_FILE = "tokenizer.model"
V1_TOKENIZER_KIND = "sentencepiece"

OFFSET_DTYPE = np.dtype("<i8")
STORED_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# Shards whose memory maps stay open at once (each map holds a file descriptor).
_OPEN_SHARDS = 16


def shard_name(index: int) -> str:
    """File stem of shard `index`, e.g. ``shard_00003``."""
    return f"shard_{index:05d}"


def stored_dtype(vocab_size: int) -> tuple[str, np.dtype]:
    """The dtype name recorded in meta.json and the explicit little-endian dtype used on disk."""
    name = token_dtype(vocab_size).name
    return name, STORED_DTYPES[name]


class TokenShards:
    """Read-only view of a token-shards directory; every file is checked against meta.json at open.

    Documents come back as views into memory maps, so opening a corpus costs no more than its
    offsets, and only the pages actually read are loaded.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = self._load_meta()
        self._dtype = STORED_DTYPES[self.meta["dtype"]]
        self._shards: list[dict[str, Any]] = self.meta["shards"]
        self._maps: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._check_tokenizer_copy()
        for index in range(self.num_shards):
            self._validate_shard(index)

    # ---- validation -------------------------------------------------------------------------

    def _load_meta(self) -> dict[str, Any]:
        """Parse meta.json and check the fields every later step relies on."""
        meta_path = self.path / META_FILE
        if not self.path.is_dir():
            raise FileNotFoundError(f"token shards directory {self.path} does not exist")
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} is missing: {self.path} is not a complete token-shards directory "
                "(meta.json is written last, so its absence means an unfinished or foreign directory)"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path} must hold a JSON object, found {type(meta).__name__}")
        _check_meta_fields(meta, meta_path)
        return meta

    def _check_tokenizer_copy(self) -> None:
        """The copied tokenizer files must exist and be the ones the ids were produced with."""
        for name, recorded in self.tokenizer_files.items():
            path = self.path / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (expected the copy of the tokenizer)")
            found = sha256_file(path)
            if found != recorded:
                raise ValueError(f"{path} has sha256 {found} but {self.path / META_FILE} records {recorded}")

    def _validate_shard(self, index: int) -> None:
        """Check one shard's .bin size and .idx offsets against meta.json and each other."""
        entry = self._shards[index]
        documents, tokens = entry["documents"], entry["tokens"]
        bin_path, idx_path = self._paths(index)
        for path in (bin_path, idx_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (listed as shard {index} in {META_FILE})")
        itemsize = self._dtype.itemsize
        size = bin_path.stat().st_size
        if size != tokens * itemsize:
            raise ValueError(
                f"{bin_path} holds {size} bytes but {META_FILE} lists {tokens} tokens of "
                f"{self.meta['dtype']} (expected {tokens * itemsize} bytes)"
            )
        idx_size = idx_path.stat().st_size
        if idx_size != (documents + 1) * OFFSET_DTYPE.itemsize:
            raise ValueError(
                f"{idx_path} holds {idx_size // OFFSET_DTYPE.itemsize} offsets ({idx_size} bytes) but "
                f"{META_FILE} lists {documents} documents (expected {documents + 1} int64 offsets)"
            )
        offsets = np.memmap(idx_path, dtype=OFFSET_DTYPE, mode="r")
        _check_offsets(offsets, tokens, idx_path, bin_path.name)
        del offsets

    # ---- properties -------------------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def dtype(self) -> np.dtype:
        """Stored token dtype (little-endian uint16 or uint32)."""
        return self._dtype

    @property
    def tokenizer_sha256(self) -> str:
        """The fingerprint of the tokenizer the ids came from (``Tokenizer.fingerprint``)."""
        return str(self.meta["tokenizer_sha256"])

    @property
    def tokenizer_kind(self) -> str:
        """``sentencepiece`` or ``hf``; version 1 directories are always SentencePiece."""
        return str(self.meta.get("tokenizer_kind", V1_TOKENIZER_KIND))

    @property
    def tokenizer_files(self) -> dict[str, str]:
        """Each copied tokenizer file (relative to the directory) with its sha256."""
        if self.meta["version"] == 1:
            return {V1_TOKENIZER_FILE: self.tokenizer_sha256}
        return dict(self.meta["tokenizer_files"])

    @property
    def tokenizer_location(self) -> Path:
        """The copied tokenizer, as ``load_tokenizer`` accepts it: the ids were produced with it."""
        if self.meta["version"] == 1:
            return self.path / V1_TOKENIZER_FILE
        return self.path / TOKENIZER_DIR

    @property
    def source(self) -> str:
        return str(self.meta.get("source", ""))

    @property
    def total_tokens(self) -> int:
        return sum(int(entry["tokens"]) for entry in self._shards)

    @property
    def total_documents(self) -> int:
        return sum(int(entry["documents"]) for entry in self._shards)

    def num_documents(self, shard: int) -> int:
        return int(self._entry(shard)["documents"])

    def num_tokens(self, shard: int) -> int:
        return int(self._entry(shard)["tokens"])

    def describe_shard(self, index: int) -> str:
        """The shard's .bin path, for error messages that must point at a file."""
        return str(self._paths(self._checked_index(index))[0])

    # ---- access ---------------------------------------------------------------------------

    def iter_shard(self, index: int, start: int = 0, stride: int = 1) -> Iterator[np.ndarray]:
        """Ids (views into the memory map) of documents ``start, start + stride, ...``: for resuming,
        and for readers that share a shard. Only a reader sharing a shard (``stride`` > 1) may start
        past the end (it then reads nothing); a lone reader there holds a position of another corpus."""
        documents = self.num_documents(index)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if start < 0 or (start > documents and stride == 1):
            raise IndexError(
                f"start document {start} is outside [0, {documents}] for {self.describe_shard(index)}"
            )
        tokens, offsets = self._open(index)
        for d in range(start, documents, stride):
            yield tokens[int(offsets[d]) : int(offsets[d + 1])]

    def document(self, shard: int, d: int) -> np.ndarray:
        """Document `d` of `shard` as a view into the memory map."""
        documents = self.num_documents(shard)
        if not 0 <= d < documents:
            raise IndexError(f"document {d} is outside [0, {documents}) for {self.describe_shard(shard)}")
        tokens, offsets = self._open(shard)
        return tokens[int(offsets[d]) : int(offsets[d + 1])]

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer the ids came from, loaded from the copy in this directory."""
        from pcpretrain.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_location)
        self.check_tokenizer(tokenizer)
        return tokenizer

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Refuse to train with a tokenizer other than the one that produced the ids."""
        if (tokenizer.kind, tokenizer.fingerprint) != (self.tokenizer_kind, self.tokenizer_sha256):
            raise ValueError(
                f"token shards at {self.path} were written with the {self.tokenizer_kind} tokenizer "
                f"{self.tokenizer_location} (fingerprint {self.tokenizer_sha256}); this run's "
                f"{tokenizer.kind} tokenizer {tokenizer.location} differs (fingerprint "
                f"{tokenizer.fingerprint}): use the shards' own tokenizer or tokenize the text again"
            )

    # ---- internals ------------------------------------------------------------------------

    def _checked_index(self, index: int) -> int:
        if not 0 <= index < self.num_shards:
            raise IndexError(
                f"shard {index} is outside [0, {self.num_shards}) for token shards at {self.path}"
            )
        return index

    def _entry(self, shard: int) -> dict[str, Any]:
        return self._shards[self._checked_index(shard)]

    def _paths(self, index: int) -> tuple[Path, Path]:
        name = self._shards[index]["name"]
        return self.path / f"{name}.bin", self.path / f"{name}.idx"

    def _open(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Memory maps (tokens, offsets) of a shard; only a few stay open, to bound file descriptors."""
        if index in self._maps:
            self._maps.move_to_end(index)
            return self._maps[index]
        bin_path, idx_path = self._paths(index)
        if self.num_tokens(index) == 0:
            tokens: np.ndarray = np.zeros(0, dtype=self._dtype)  # an empty file cannot be mapped
        else:
            tokens = np.memmap(bin_path, dtype=self._dtype, mode="r")
        offsets = np.memmap(idx_path, dtype=OFFSET_DTYPE, mode="r")
        self._maps[index] = (tokens, offsets)
        while len(self._maps) > _OPEN_SHARDS:
            self._maps.popitem(last=False)
        return tokens, offsets

    def __repr__(self) -> str:
        return (
            f"TokenShards({str(self.path)!r}, shards={self.num_shards}, documents={self.total_documents}, "
            f"tokens={self.total_tokens}, dtype={self.meta['dtype']})"
        )


def _check_meta_fields(meta: dict[str, Any], meta_path: Path) -> None:
    """Format, version, dtype and the shard list of meta.json, each with a precise message."""
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{meta_path} has version {meta.get('version')!r}, expected one of "
            f"{', '.join(map(str, READABLE_VERSIONS))} (the versions this pcpretrain reads)"
        )
    vocab_size = meta.get("vocab_size")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"{meta_path} has vocab_size {vocab_size!r}, expected a positive integer")
    expected_dtype = stored_dtype(vocab_size)[0]
    if meta.get("dtype") != expected_dtype:
        raise ValueError(
            f"{meta_path} has dtype {meta.get('dtype')!r}, expected {expected_dtype!r} "
            f"for vocab_size {vocab_size}"
        )
    if not isinstance(meta.get("tokenizer_sha256"), str):
        raise ValueError(f"{meta_path} has no tokenizer_sha256 string")
    if meta["version"] >= 2:
        _check_tokenizer_fields(meta, meta_path)
    shards = meta.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{meta_path} has shards {shards!r}, expected a list of shard entries")
    if meta.get("num_shards") != len(shards):
        raise ValueError(
            f"{meta_path} has num_shards {meta.get('num_shards')!r} but lists {len(shards)} shards"
        )
    for index, entry in enumerate(shards):
        _check_shard_entry(entry, index, meta_path)


def _check_tokenizer_fields(meta: dict[str, Any], meta_path: Path) -> None:
    """tokenizer_kind and tokenizer_files: a kind name and files inside the tokenizer folder."""
    if not isinstance(meta.get("tokenizer_kind"), str):
        raise ValueError(f"{meta_path} has no tokenizer_kind string (expected 'sentencepiece' or 'hf')")
    files = meta.get("tokenizer_files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{meta_path} has tokenizer_files {files!r}, expected a non-empty object")
    for name, digest in files.items():
        parts = PurePosixPath(name).parts
        if len(parts) < 2 or parts[0] != TOKENIZER_DIR or ".." in parts or not isinstance(digest, str):
            raise ValueError(
                f"{meta_path} lists tokenizer file {name!r}: {digest!r}, expected "
                f"'{TOKENIZER_DIR}/<file>' with a sha256 string"
            )


def _check_shard_entry(entry: Any, index: int, meta_path: Path) -> None:
    """One entry of meta.json's shard list: the expected name and non-negative counts."""
    expected = shard_name(index)
    if not isinstance(entry, dict) or entry.get("name") != expected:
        found = entry.get("name") if isinstance(entry, dict) else entry
        raise ValueError(f"{meta_path} lists shard {index} as {found!r}, expected name {expected!r}")
    for key in ("documents", "tokens"):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{meta_path} gives {expected} {key}={value!r}, expected a non-negative integer")


def _check_offsets(offsets: np.ndarray, tokens: int, idx_name: Path, bin_name: str) -> None:
    """offsets[0] == 0, offsets[-1] == tokens in the .bin, and never decreasing."""
    if int(offsets[0]) != 0:
        raise ValueError(f"{idx_name} starts at offset {int(offsets[0])}, expected 0")
    if int(offsets[-1]) != tokens:
        raise ValueError(f"{idx_name} ends at {int(offsets[-1])} tokens but {bin_name} holds {tokens} tokens")
    steps = np.diff(offsets)
    if steps.size and int(steps.min()) < 0:
        d = int(np.argmax(steps < 0))
        raise ValueError(
            f"{idx_name} offsets decrease at document {d}: offsets[{d}]={int(offsets[d])} > "
            f"offsets[{d + 1}]={int(offsets[d + 1])} (expected non-decreasing)"
        )
