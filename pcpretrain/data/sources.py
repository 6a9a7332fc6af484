"""Sharded, streaming text sources: local files and Hugging Face Hub datasets, read the same way.

Both kinds are `datasets` streaming `IterableDataset`s, so a training pipeline can hand each
data-parallel rank x loader worker whole shards and resume a shard from a document position.

- Local files: one shard per file, in the order `local_files.resolve_files` gives. All files of a
  source must use one `datasets` builder (`.jsonl`/`.json` -> json, `.parquet`, `.txt` -> text). A
  `.txt` file is read with the text builder's `sample_by="paragraph"`, so a document is a paragraph
  (text separated by a blank line) and its column is always "text", whatever `text_field` says.
  Each file is read through its own one-file streaming dataset: `datasets` infers a multi-file
  source's fields from its first file and casts every other file to them, which rejects files with
  other extra fields and silently turns a missing text field into nulls.
- Hub datasets (or a local directory laid out like a Hub repository): `datasets` decides the shards,
  normally one per data file of the split; a shard is read through `IterableDataset.shard`.

Positions index raw rows: `iter_shard` yields one text per row ("" for a null or empty one), so a
reader that counts what it received resumes with `iter_shard(index, start)` at exactly that place.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pcpretrain.data.local_files import BUILDERS, resolve_files

if TYPE_CHECKING:
    from datasets import IterableDataset

SOURCE_KINDS = ("files", "hub")
# Rows converted to Python at a time: few enough that long documents stay cheap in memory.
_BATCH_ROWS = 256
_TXT_OPTIONS = {"sample_by": "paragraph"}


class DataSourceError(ValueError):
    """A source that cannot be read as text documents; the message names the file or dataset."""


@dataclass(frozen=True)
class _LocalFiles:
    """The files of a local source and how `datasets` reads them."""

    builder: str
    files: tuple[Path, ...]
    cache_dir: Path | None

    def load(self, files: Sequence[Path]) -> IterableDataset:
        """A streaming dataset over `files`, one shard per file."""
        from datasets import load_dataset

        return load_dataset(
            self.builder,
            data_files=[str(path) for path in files],
            split="train",
            streaming=True,
            cache_dir=None if self.cache_dir is None else str(self.cache_dir),
            **(_TXT_OPTIONS if self.builder == "text" else {}),
        )

    def load_file(self, path: Path) -> IterableDataset:
        """One file's own streaming dataset; refuses an empty parquet file, on which `datasets` fails."""
        if self.builder == "parquet" and pq.ParquetFile(path).metadata.num_rows == 0:
            raise DataSourceError(f"{path} has no rows; expected at least one document")
        return self.load([path])


class _ReadErrors:
    """Re-raises `datasets` / pyarrow read errors as DataSourceErrors naming what was being read."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        if error is None or isinstance(error, DataSourceError):
            return False
        translated = _translate_read_error(error, self.name)
        if translated is None:
            return False
        raise translated from error


def _translate_read_error(error: BaseException, name: str) -> DataSourceError | None:
    """A DataSourceError saying what went wrong with `name`, or None for errors that are not about data."""
    if isinstance(error, UnicodeDecodeError):
        return DataSourceError(f"{name} is not valid UTF-8 ({error}); re-encode it as UTF-8")
    if isinstance(error, StopIteration):  # the json builder's schema probe found no rows
        return DataSourceError(f"{name} has no rows; expected at least one document")
    if type(error).__name__ == "CastError":
        return DataSourceError(
            f"{name} has rows whose fields differ from those inferred from its first rows: {error}"
        )
    if isinstance(error, (pa.ArrowException, ValueError, OSError)):
        return DataSourceError(
            f"{name} could not be read: {type(error).__name__}: {_with_line(str(error), name)}"
        )
    return None


_JSON_ROW = re.compile(r"\bin row (\d+)$")


def _with_line(message: str, name: str) -> str:
    """pyarrow's JSON errors count rows from 0 over the non-blank lines; say which line of the file."""
    match = _JSON_ROW.search(message)
    path = Path(name)
    if match is None or not path.is_file():
        return message
    row = int(match.group(1))
    with path.open("rb") as handle:
        rows = (number for number, line in enumerate(handle, start=1) if line.strip())
        line = next(itertools.islice(rows, row, None), None)
    return message if line is None else f"{message[: match.start()]}on line {line}"


class TextSource:
    """Text documents from sharded files or a Hub dataset, streamed shard by shard."""

    def __init__(
        self,
        dataset: IterableDataset,
        description: str,
        text_field: str = "text",
        local: _LocalFiles | None = None,
    ) -> None:
        self.dataset = dataset
        self.description = description
        self.text_field = text_field
        self._local = local
        self._shard_names = [str(path) for path in local.files] if local else _hub_shard_names(dataset)

    @classmethod
    def from_files(
        cls, paths: Sequence[str], text_field: str = "text", cache_dir: Path | None = None
    ) -> TextSource:
        """A source over local files, globs and directories (recursively, supported suffixes only)."""
        files = _resolve(paths)
        local = _LocalFiles(_single_builder(files), tuple(files), cache_dir)
        field = "text" if local.builder == "text" else text_field
        shown = ", ".join(str(path) for path in paths)
        description = f"{len(files)} {local.builder} file(s) from {shown}"
        with _ReadErrors(str(files[0]) if len(files) == 1 else description):
            dataset = local.load(files)
        return cls(dataset, description, field, local)

    @classmethod
    def from_hub(
        cls,
        path: str,
        name: str | None = None,
        split: str = "train",
        text_field: str = "text",
        revision: str | None = None,
        data_files: Any = None,
        cache_dir: Path | None = None,
    ) -> TextSource:
        """A source over a Hub dataset (or a local directory laid out like one), streamed."""
        from datasets import load_dataset

        details = ", ".join(
            f"{key}={value}" for key, value in (("name", name), ("revision", revision)) if value
        )
        description = f"Hub dataset {path!r} split {split!r}" + (f" ({details})" if details else "")
        try:
            dataset = load_dataset(
                path,
                name=name,
                split=split,
                revision=revision,
                data_files=data_files,
                cache_dir=None if cache_dir is None else str(cache_dir),
                streaming=True,
            )
        except Exception as error:  # datasets raises many types for a repository it cannot open
            raise DataSourceError(f"cannot open {description}: {type(error).__name__}: {error}") from error
        return cls(dataset, description, text_field)

    @property
    def num_shards(self) -> int:
        """Shards a pipeline can hand out whole: one per file for local files."""
        return len(self._local.files) if self._local else self.dataset.num_shards

    def describe_shard(self, index: int) -> str:
        """The file (or Hub shard) behind shard `index`, for messages."""
        self._check_index(index)
        if self._local:
            return self._shard_names[index]
        where = f" ({self._shard_names[index]})" if self._shard_names else ""
        return f"{self.description} shard {index} of {self.num_shards}{where}"

    def iter_shard(self, index: int, start: int = 0, stride: int = 1) -> Iterator[str]:
        """The text of rows ``start, start + stride, ...`` of shard `index`, "" for null or empty rows.

        One item per row, so a reader that counts what it receives holds a position it can resume
        from exactly; empty texts are dropped later, at packing. Skipped rows are never converted to
        Python strings.
        """
        self._check_index(index)
        if start < 0 or stride < 1:
            raise ValueError(f"start must be >= 0 and stride >= 1, got start={start}, stride={stride}")
        return (text or "" for text in self._counted_rows(index, start, stride))

    def check(self) -> None:
        """Fail now, naming the file, if shard 0 has no rows or its first rows lack a string text field."""
        if next(self._rows(0, 0), _NO_ROW) is _NO_ROW:
            raise DataSourceError(f"{self.describe_shard(0)} has no rows; expected at least one document")

    def first_documents(self, n: int) -> list[str]:
        """The first `n` non-empty texts in shard order (fewer if there are fewer): a held-out head."""
        documents: list[str] = []
        for index in range(self.num_shards):
            if len(documents) >= n:
                break
            texts = (text for text in self.iter_shard(index) if text)
            documents.extend(itertools.islice(texts, n - len(documents)))
        return documents

    def __repr__(self) -> str:
        return f"TextSource({self.description}, text_field={self.text_field!r}, num_shards={self.num_shards})"

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_shards:
            raise IndexError(f"shard {index} out of range: {self.description} has {self.num_shards} shards")

    def _open_shard(self, index: int) -> IterableDataset:
        """A one-shard streaming dataset: the file alone for local sources, else `shard` of the whole."""
        if self._local:
            return self._local.load_file(self._local.files[index])
        return self.dataset.shard(num_shards=self.num_shards, index=index)

    def _counted_rows(self, index: int, start: int, stride: int = 1) -> Iterator[str | None]:
        """The rows from `start`, every `stride`-th; a shard with no rows at all is an error."""
        rows = 0
        for text in self._rows(index, start, stride):
            rows += 1
            yield text
        if rows == 0 and start == 0:
            raise DataSourceError(f"{self.describe_shard(index)} has no rows; expected at least one document")

    def _rows(self, index: int, start: int, stride: int = 1) -> Iterator[str | None]:
        """Raw text values (None for nulls) of every `stride`-th row of shard `index` from row `start`,
        read as Arrow batches.

        `skip` on Arrow batches drops whole tables without converting them to Python, so resuming
        deep into a shard costs little more than parsing the file.
        """
        name = self.describe_shard(index)
        with _ReadErrors(name):
            dataset = self._open_shard(index)
            batches = (dataset.skip(start) if start else dataset).with_format("arrow").iter(_BATCH_ROWS)
        read = 0
        while True:
            with _ReadErrors(name):
                table = next(batches, None)
                if table is None:
                    return
                if stride > 1:
                    rows = pa.array(range((-read) % stride, table.num_rows, stride), type=pa.int64())
                    read += table.num_rows
                    table = table.take(rows)
                texts = _column_texts(table, self.text_field, name)
            yield from texts


_NO_ROW = object()


def _column_texts(table: pa.Table, field: str, name: str) -> list[str | None]:
    """The `field` column of a batch as Python strings, checking it exists and holds strings."""
    if field not in table.column_names:
        raise DataSourceError(f"{name}: no field {field!r}; fields present: {table.column_names}")
    column = table.column(field)
    if not _is_text_type(column.type):
        raise DataSourceError(
            f"{name}: field {field!r} holds {column.type} values, expected strings (every row's {field!r} "
            "must be a string or null)"
        )
    return column.to_pylist()


def _is_text_type(kind: pa.DataType) -> bool:
    """Arrow types whose values are strings or nulls; mixed JSON values arrive as an extension type."""
    types = pa.types
    return (
        types.is_string(kind)
        or types.is_large_string(kind)
        or types.is_string_view(kind)
        or types.is_null(kind)
    )


def _resolve(paths: Sequence[str]) -> list[Path]:
    """Files for `paths`, with path errors re-raised as DataSourceErrors."""
    try:
        return resolve_files(paths)
    except (FileNotFoundError, ValueError) as error:
        raise DataSourceError(str(error)) from error


def _single_builder(files: Sequence[Path]) -> str:
    """The one `datasets` builder all `files` use; a mix is an error naming an example of each."""
    examples: dict[str, Path] = {}
    for path in files:
        examples.setdefault(BUILDERS[path.suffix.lower()], path)
    if len(examples) > 1:
        found = ", ".join(f"{builder} ({path})" for builder, path in examples.items())
        raise DataSourceError(f"files of one source must share one format; found {found}")
    return next(iter(examples))


def _hub_shard_names(dataset: IterableDataset) -> list[str] | None:
    """The data file of each shard, where `datasets` keeps them in its builder arguments; else None."""
    iterable = getattr(dataset, "_ex_iterable", None)
    while iterable is not None and not hasattr(iterable, "kwargs"):
        iterable = getattr(iterable, "ex_iterable", None)
    arguments = getattr(iterable, "kwargs", None)
    if not isinstance(arguments, dict):
        return None
    for key in ("base_files", "files", "original_files"):
        names = arguments.get(key)
        if (
            isinstance(names, list)
            and len(names) == dataset.num_shards
            and all(isinstance(item, str) for item in names)
        ):
            return names
    return None


def open_text_source(
    kind: str,
    *,
    paths: Sequence[str] | None = None,
    hub_path: str | None = None,
    hub_name: str | None = None,
    split: str = "train",
    text_field: str = "text",
    cache_dir: Path | None = None,
) -> TextSource:
    """A TextSource from config-style arguments: `kind` "files" needs `paths`, "hub" needs `hub_path`."""
    if kind == "files":
        if not paths:
            raise DataSourceError("a 'files' source needs paths (files, globs or directories)")
        return TextSource.from_files(paths, text_field=text_field, cache_dir=cache_dir)
    if kind == "hub":
        if not hub_path:
            raise DataSourceError("a 'hub' source needs hub_path (a Hub dataset id or a local directory)")
        return TextSource.from_hub(
            hub_path, name=hub_name, split=split, text_field=text_field, cache_dir=cache_dir
        )
    raise DataSourceError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
