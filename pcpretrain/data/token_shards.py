"""Pre-tokenized corpora on disk: a directory of token shards, memory-mapped on read.

Layout of a token-shards directory::

    meta.json            description of the corpus (below); written last
    tokenizer.model      byte-for-byte copy of the tokenizer model the ids came from
    shard_00000.bin      token ids of shard 0
    shard_00000.idx      document offsets of shard 0
    shard_00001.bin      ...

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
    stored, so in shards written by :class:`TokenShardWriter` they strictly increase.

``meta.json``
    A JSON object::

        {
          "format": "pcpretrain-token-shards",
          "version": 1,
          "dtype": "uint16" | "uint32",
          "vocab_size": <int>,
          "tokenizer_sha256": <hex sha256 of tokenizer.model>,
          "num_shards": <int>,
          "shards": [{"name": "shard_00000", "documents": <int>, "tokens": <int>}, ...],
          "source": <free text: where the text came from>
        }

    ``shards`` lists every shard in order, ``num_shards == len(shards)``.

A directory is complete exactly when it has ``meta.json``: the writer builds everything in a
hidden temporary directory beside the target (``.<name>.tmp-write-*``), writes ``meta.json`` last
and renames the directory into place, so an interrupted write never leaves a directory that looks
complete (a hard kill may leave the hidden temporary directory behind; it is safe to delete).

:class:`TokenShards` validates every listed file against ``meta.json`` when it is opened, so a
truncated or mismatched corpus fails before training starts rather than mid-run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from pcpretrain.data.packing import token_dtype
from pcpretrain.files import fsync_dir, sha256_file

FORMAT_NAME = "pcpretrain-token-shards"
FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.model"

_OFFSET_DTYPE = np.dtype("<i8")
_STORED_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# Tokens buffered in memory before they are appended to the open .bin file.
_FLUSH_TOKENS = 1 << 20
# Shards whose memory maps stay open at once (each map holds a file descriptor).
_OPEN_SHARDS = 16


def shard_name(index: int) -> str:
    """File stem of shard `index`, e.g. ``shard_00003``."""
    return f"shard_{index:05d}"


def _stored_dtype(vocab_size: int) -> tuple[str, np.dtype]:
    """The dtype name recorded in meta.json and the explicit little-endian dtype used on disk."""
    name = token_dtype(vocab_size).name
    return name, _STORED_DTYPES[name]


def _is_nonempty(path: Path) -> bool:
    """True for an existing file or a directory with any entry in it."""
    if not path.exists():
        return False
    return not path.is_dir() or any(path.iterdir())


class TokenShardWriter:
    """Write a token-shards directory (see the module docstring) one document at a time.

    Use as a context manager: leaving the block normally finishes the corpus, leaving it with an
    exception discards everything, so a failed run never leaves a usable-looking directory.
    """

    def __init__(
        self,
        out_dir: str | Path,
        vocab_size: int,
        tokenizer_model: str | Path,
        source: str = "",
        overwrite: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.vocab_size = int(vocab_size)
        self.source = source
        self.overwrite = overwrite
        self._dtype_name, self._dtype = _stored_dtype(self.vocab_size)
        self._refuse_overwrite()
        tokenizer_model = Path(tokenizer_model)
        if not tokenizer_model.is_file():
            raise FileNotFoundError(f"tokenizer model {tokenizer_model} does not exist")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-write-", dir=self.out_dir.parent))
        try:
            shutil.copyfile(tokenizer_model, self._tmp / TOKENIZER_FILE)
            self._tokenizer_sha256 = sha256_file(self._tmp / TOKENIZER_FILE)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._shards: list[dict[str, Any]] = []
        self._bin: Any = None
        self._offsets = array("q", [0])
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._closed = False

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _refuse_overwrite(self) -> None:
        """Fail before any work (and again before the rename) rather than clobber a corpus."""
        if not self.overwrite and _is_nonempty(self.out_dir):
            raise FileExistsError(
                f"token shards output {self.out_dir} already exists and is not empty; "
                "pass overwrite=True to replace it"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"TokenShardWriter for {self.out_dir} is already closed")

    def begin_shard(self) -> None:
        """Finish the current shard (if any) and start the next one."""
        self._check_open()
        self._finish_shard()
        name = shard_name(len(self._shards))
        self._shards.append({"name": name, "documents": 0, "tokens": 0})
        self._bin = open(self._tmp / f"{name}.bin", "wb")  # noqa: SIM115 - closed in _finish_shard
        self._offsets = array("q", [0])

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document to the current shard (starting shard 0 if none); empty ones are skipped."""
        self._check_open()
        tokens = self._validated(ids)
        if tokens.size == 0:
            return
        if self._bin is None:
            self.begin_shard()
        self._buffer.append(tokens.astype(self._dtype, copy=False))
        self._buffered += int(tokens.size)
        self._offsets.append(self._offsets[-1] + int(tokens.size))
        if self._buffered >= _FLUSH_TOKENS:
            self._flush()

    def _validated(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Ids as a 1-D integer array, all in [0, vocab_size), so bad ids never reach the disk."""
        tokens = np.asarray(ids)
        if tokens.size == 0:
            return tokens.reshape(0)
        if tokens.ndim != 1:
            raise ValueError(f"a document must be a 1-D sequence of token ids, got shape {tokens.shape}")
        if tokens.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {tokens.dtype}")
        low, high = tokens.min(), tokens.max()
        if low < 0 or high >= self.vocab_size:
            bad = int(low) if low < 0 else int(high)
            raise ValueError(
                f"token id {bad} is outside the vocabulary [0, {self.vocab_size}) "
                f"(document {self._current_documents()} of shard {max(len(self._shards) - 1, 0)})"
            )
        return tokens

    def _current_documents(self) -> int:
        return len(self._offsets) - 1 if self._bin is not None else 0

    def _flush(self) -> None:
        """Append the buffered documents to the open .bin file."""
        if self._buffer:
            np.concatenate(self._buffer).tofile(self._bin)
        self._buffer = []
        self._buffered = 0

    def _finish_shard(self) -> None:
        """Flush and close the open shard's .bin and write its .idx."""
        if self._bin is None:
            return
        self._flush()
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._bin = None
        entry = self._shards[-1]
        entry["documents"] = len(self._offsets) - 1
        entry["tokens"] = int(self._offsets[-1])
        self._write_file(f"{entry['name']}.idx", np.asarray(self._offsets, dtype=_OFFSET_DTYPE).tobytes())

    def _write_file(self, name: str, data: bytes) -> None:
        with open(self._tmp / name, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dtype": self._dtype_name,
            "vocab_size": self.vocab_size,
            "tokenizer_sha256": self._tokenizer_sha256,
            "num_shards": len(self._shards),
            "shards": self._shards,
            "source": self.source,
        }

    def close(self) -> None:
        """Finish the current shard, write meta.json last, then move the directory into place."""
        if self._closed:
            return
        try:
            self._finish_shard()
            self._write_file(META_FILE, (json.dumps(self._meta(), indent=2) + "\n").encode())
            self._refuse_overwrite()
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def _move_into_place(self) -> None:
        """Rename the finished temporary directory to out_dir, replacing an old one only at the end."""
        trash = None
        if self.out_dir.exists() or self.out_dir.is_symlink():
            if self.out_dir.is_dir() and not self.out_dir.is_symlink():
                trash = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.old-", dir=self.out_dir.parent))
                os.replace(self.out_dir, trash / "old")
            else:
                self.out_dir.unlink()
        os.replace(self._tmp, self.out_dir)
        fsync_dir(self.out_dir.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written so far; out_dir is left as it was."""
        if self._bin is not None:
            self._bin.close()
            self._bin = None
        self._buffer = []
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True


class TokenShards:
    """Read-only view of a token-shards directory; every file is checked against meta.json at open.

    Documents come back as views into memory maps, so opening a corpus costs no more than its
    offsets, and only the pages actually read are loaded.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = self._load_meta()
        self._dtype = _STORED_DTYPES[self.meta["dtype"]]
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
        """The copied tokenizer must exist and be the one the ids were produced with."""
        path = self.tokenizer_path
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (expected the copy of the tokenizer model)")
        found = sha256_file(path)
        if found != self.tokenizer_sha256:
            raise ValueError(
                f"{path} has sha256 {found} but {self.path / META_FILE} records {self.tokenizer_sha256}"
            )

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
        if idx_size != (documents + 1) * _OFFSET_DTYPE.itemsize:
            raise ValueError(
                f"{idx_path} holds {idx_size // _OFFSET_DTYPE.itemsize} offsets ({idx_size} bytes) but "
                f"{META_FILE} lists {documents} documents (expected {documents + 1} int64 offsets)"
            )
        offsets = np.memmap(idx_path, dtype=_OFFSET_DTYPE, mode="r")
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
        return str(self.meta["tokenizer_sha256"])

    @property
    def tokenizer_path(self) -> Path:
        """The tokenizer model copied in by the writer: the one the ids were produced with."""
        return self.path / TOKENIZER_FILE

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

    def iter_shard(self, index: int, start: int = 0) -> Iterator[np.ndarray]:
        """Each document's ids (views into the memory map) from document `start` on; for resuming."""
        documents = self.num_documents(index)
        if not 0 <= start <= documents:
            raise IndexError(
                f"start document {start} is outside [0, {documents}] for {self.describe_shard(index)}"
            )
        tokens, offsets = self._open(index)
        for d in range(start, documents):
            yield tokens[int(offsets[d]) : int(offsets[d + 1])]

    def document(self, shard: int, d: int) -> np.ndarray:
        """Document `d` of `shard` as a view into the memory map."""
        documents = self.num_documents(shard)
        if not 0 <= d < documents:
            raise IndexError(f"document {d} is outside [0, {documents}) for {self.describe_shard(shard)}")
        tokens, offsets = self._open(shard)
        return tokens[int(offsets[d]) : int(offsets[d + 1])]

    def check_tokenizer(self, tokenizer_model_path: str | Path) -> None:
        """Refuse to train with a tokenizer other than the one that produced the ids."""
        found = sha256_file(tokenizer_model_path)
        if found != self.tokenizer_sha256:
            raise ValueError(
                f"token shards at {self.path} were written with tokenizer sha256 {self.tokenizer_sha256} "
                f"({self.tokenizer_path}); this run's tokenizer {tokenizer_model_path} differs "
                f"(sha256 {found})"
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
        offsets = np.memmap(idx_path, dtype=_OFFSET_DTYPE, mode="r")
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
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has version {meta.get('version')!r}, expected {FORMAT_VERSION} "
            "(this pcpretrain reads only that version)"
        )
    vocab_size = meta.get("vocab_size")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"{meta_path} has vocab_size {vocab_size!r}, expected a positive integer")
    expected_dtype = _stored_dtype(vocab_size)[0]
    if meta.get("dtype") != expected_dtype:
        raise ValueError(
            f"{meta_path} has dtype {meta.get('dtype')!r}, expected {expected_dtype!r} "
            f"for vocab_size {vocab_size}"
        )
    if not isinstance(meta.get("tokenizer_sha256"), str):
        raise ValueError(f"{meta_path} has no tokenizer_sha256 string")
    shards = meta.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{meta_path} has shards {shards!r}, expected a list of shard entries")
    if meta.get("num_shards") != len(shards):
        raise ValueError(
            f"{meta_path} has num_shards {meta.get('num_shards')!r} but lists {len(shards)} shards"
        )
    for index, entry in enumerate(shards):
        _check_shard_entry(entry, index, meta_path)


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
