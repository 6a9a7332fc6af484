"""Writing token-shards directories (format: :mod:`pcpretrain.data.token_shards`).

The pieces are shared by the one-process :class:`TokenShardWriter` and by ``pcpretrain tokenize``,
which writes shards in parallel processes and continues an interrupted run: one shard's files
(:class:`ShardFile`), the tokenizer copy, meta.json, and the final rename into place.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from array import array
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from pcpretrain.data.token_shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    OFFSET_DTYPE,
    TOKENIZER_DIR,
    shard_name,
    stored_dtype,
)
from pcpretrain.files import fsync_dir, sha256_file

if TYPE_CHECKING:
    from pcpretrain.data.tokenizer_base import Tokenizer

# Tokens buffered in memory before they are appended to the open .bin file.
_FLUSH_TOKENS = 1 << 20
# Temporary files of unfinished shards: hidden, so a directory listing shows only finished ones.
TEMP_GLOB = ".shard_*.tmp"


class ShardFile:
    """One shard's ``.bin`` and ``.idx``, written under hidden temporary names and renamed into place
    by :meth:`finish` (``.bin`` first, ``.idx`` last): a shard whose ``.idx`` exists is complete, and a
    process killed at any moment leaves at most a stray temporary file.
    """

    def __init__(self, directory: Path, index: int, vocab_size: int) -> None:
        self.directory = Path(directory)
        self.index = index
        self.name = shard_name(index)
        self.vocab_size = vocab_size
        self._dtype = stored_dtype(vocab_size)[1]
        self._bin_tmp = self._temp_path("bin")
        self._bin: Any = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in finish/discard
        self._offsets = array("q", [0])
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def _temp_path(self, suffix: str) -> Path:
        """A fresh hidden file per writer, so two processes writing the same shard never mix bytes."""
        path = unique_path(self.directory, f".{self.name}.{suffix}.", ".tmp")
        path.open("xb").close()
        return path

    @property
    def documents(self) -> int:
        return len(self._offsets) - 1

    def add(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document; empty ones are skipped (never stored)."""
        tokens = self._validated(ids)
        if tokens.size == 0:
            return
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
                f"(document {self.documents} of shard {self.index})"
            )
        return tokens

    def _flush(self) -> None:
        if self._buffer:
            np.concatenate(self._buffer).tofile(self._bin)
        self._buffer = []
        self._buffered = 0

    def finish(self) -> dict[str, Any]:
        """Make the shard durable under its final names; returns its meta.json entry."""
        self._flush()
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        idx_tmp = self._temp_path("idx")
        with open(idx_tmp, "wb") as handle:
            handle.write(np.asarray(self._offsets, dtype=OFFSET_DTYPE).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(self._bin_tmp, self.directory / f"{self.name}.bin")
        os.replace(idx_tmp, self.directory / f"{self.name}.idx")
        fsync_dir(self.directory)
        return {"name": self.name, "documents": self.documents, "tokens": int(self._offsets[-1])}

    def discard(self) -> None:
        """Close and delete the temporary file; nothing of this shard stays."""
        self._bin.close()
        self._buffer = []
        self._bin_tmp.unlink(missing_ok=True)


def unique_path(directory: Path, prefix: str, suffix: str = "") -> Path:
    """A name in ``directory`` that no other process picks. Unlike mkstemp/mkdtemp, what is created
    under it gets the umask's permissions, so a corpus on a shared filesystem stays readable to all."""
    return directory / f"{prefix}{os.getpid()}-{secrets.token_hex(6)}{suffix}"


def finished_shard(directory: Path, index: int, vocab_size: int) -> dict[str, Any] | None:
    """The meta.json entry of a shard :meth:`ShardFile.finish` completed in ``directory``, else None.

    The ``.idx`` is renamed last, so its presence with a ``.bin`` of the size it implies means done.
    """
    name = shard_name(index)
    bin_path, idx_path = directory / f"{name}.bin", directory / f"{name}.idx"
    if not (idx_path.is_file() and bin_path.is_file()):
        return None
    offsets = np.fromfile(idx_path, dtype=OFFSET_DTYPE)
    if offsets.size == 0:
        return None
    tokens = int(offsets[-1])
    if bin_path.stat().st_size != tokens * stored_dtype(vocab_size)[1].itemsize:
        return None
    return {"name": name, "documents": int(offsets.size - 1), "tokens": tokens}


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> dict[str, Any]:
    """Copy the tokenizer's defining files into ``directory/tokenizer``; returns its meta.json fields."""
    tokenizer.save_files(directory / TOKENIZER_DIR)
    return tokenizer_fields(tokenizer.kind, tokenizer.fingerprint, directory)


def tokenizer_fields(kind: str, fingerprint: str, directory: Path) -> dict[str, Any]:
    """meta.json's tokenizer fields for the copy already in ``directory/tokenizer``."""
    target = directory / TOKENIZER_DIR
    files = sorted(path for path in target.rglob("*") if path.is_file())
    if not files:
        raise ValueError(f"the {kind} tokenizer wrote no files into {target}")
    return {
        "tokenizer_kind": kind,
        "tokenizer_sha256": fingerprint,
        "tokenizer_files": {path.relative_to(directory).as_posix(): sha256_file(path) for path in files},
    }


def build_meta(
    vocab_size: int, tokenizer_fields: dict[str, Any], shards: list[dict[str, Any]], source: str
) -> dict[str, Any]:
    """The meta.json object of a finished directory."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "dtype": stored_dtype(vocab_size)[0],
        "vocab_size": vocab_size,
        **tokenizer_fields,
        "num_shards": len(shards),
        "shards": shards,
        "source": source,
    }


def write_json_durably(path: Path, value: Any) -> None:
    """Write a JSON file and fsync it (inside a directory that is renamed into place as a whole)."""
    with open(path, "wb") as handle:
        handle.write((json.dumps(value, indent=2) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def is_nonempty(path: Path) -> bool:
    """True for an existing file or a directory with any entry in it."""
    if not path.exists():
        return False
    return not path.is_dir() or any(path.iterdir())


def refuse_overwrite(out_dir: Path, overwrite: bool) -> None:
    """Fail before any work (and again before the rename) rather than clobber a corpus."""
    if not overwrite and is_nonempty(out_dir):
        raise FileExistsError(
            f"token shards output {out_dir} already exists and is not empty; "
            "pass overwrite=True (pcpretrain tokenize --overwrite) to replace it"
        )


def move_into_place(finished: Path, out_dir: Path) -> None:
    """Rename the finished directory to out_dir, replacing an old one only at the end."""
    trash = None
    if out_dir.exists() or out_dir.is_symlink():
        if out_dir.is_dir() and not out_dir.is_symlink():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
        else:
            out_dir.unlink()
    os.replace(finished, out_dir)
    fsync_dir(out_dir.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


class TokenShardWriter:
    """Write a token-shards directory one document at a time, in this process.

    Use as a context manager: leaving the block normally finishes the corpus, leaving it with an
    exception discards everything, so a failed run never leaves a usable-looking directory.
    """

    def __init__(
        self, out_dir: str | Path, tokenizer: Tokenizer, source: str = "", overwrite: bool = False
    ) -> None:
        self.out_dir = Path(out_dir)
        self.vocab_size = int(tokenizer.vocab_size)
        self.source = source
        self.overwrite = overwrite
        refuse_overwrite(self.out_dir, overwrite)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = unique_path(self.out_dir.parent, f".{self.out_dir.name}.tmp-write-")
        self._tmp.mkdir()
        try:
            self._tokenizer_fields = save_tokenizer(tokenizer, self._tmp)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._shards: list[dict[str, Any]] = []
        self._current: ShardFile | None = None
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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"TokenShardWriter for {self.out_dir} is already closed")

    def begin_shard(self) -> None:
        """Finish the current shard (if any) and start the next one."""
        self._check_open()
        self._finish_shard()
        self._current = ShardFile(self._tmp, len(self._shards), self.vocab_size)

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document to the current shard (starting shard 0 if none); empty ones are skipped."""
        self._check_open()
        if self._current is None:
            self.begin_shard()
        assert self._current is not None
        self._current.add(ids)

    def _finish_shard(self) -> None:
        if self._current is not None:
            self._shards.append(self._current.finish())
            self._current = None

    def close(self) -> None:
        """Finish the current shard, write meta.json last, then move the directory into place."""
        if self._closed:
            return
        try:
            self._finish_shard()
            meta = build_meta(self.vocab_size, self._tokenizer_fields, self._shards, self.source)
            write_json_durably(self._tmp / META_FILE, meta)
            refuse_overwrite(self.out_dir, self.overwrite)
            move_into_place(self._tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Discard everything written so far; out_dir is left as it was."""
        if self._current is not None:
            self._current.discard()
            self._current = None
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True
