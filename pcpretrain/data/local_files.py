"""Read documents from local jsonl / json / parquet / txt files through `datasets` builders.

Paths may be files, globs or directories. Files are read one at a time, in sorted order within
each given path, so errors can name the file and the document order is deterministic.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

# File suffix -> `datasets` packaged builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
_GLOB_CHARS = frozenset("*?[")


def read_documents(
    paths: Sequence[str | Path],
    text_field: str = "text",
    cache_dir: str | Path | None = None,
    txt_sample_by: str = "document",
) -> list[str]:
    """Texts of all documents in `paths`, in order; empty and null texts are skipped.

    `cache_dir` is where `datasets` keeps its Arrow cache (its default cache when None). A `.txt`
    file is one document by default (`txt_sample_by="document"`); "paragraph" or "line" split it.
    """
    files = resolve_files(paths)
    documents: list[str] = []
    for path in files:
        documents.extend(_read_file(path, text_field, cache_dir, txt_sample_by))
    if not documents:
        raise ValueError(f"no non-empty documents in {[str(p) for p in paths]} ({len(files)} files read)")
    return documents


def resolve_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files, globs and directories (recursively) into a list of supported files.

    Directories contribute only files with a supported suffix; a file named directly or matched by a
    glob must have one.
    """
    if isinstance(paths, (str, Path)):
        raise TypeError(f"paths must be a list of paths, got a single {type(paths).__name__}: {paths!r}")
    if not paths:
        raise ValueError("no data paths given")
    files: list[Path] = []
    for entry in paths:
        for path in _expand(str(entry)):
            if path.suffix.lower() not in BUILDERS:
                supported = ", ".join(sorted(BUILDERS))
                raise ValueError(
                    f"unsupported file type {path.suffix or '(none)'!r} for {path}; use {supported}"
                )
            files.append(path)
    return files


def _expand(entry: str) -> list[Path]:
    """Files for one entry of `paths`; raises FileNotFoundError naming entries that match nothing."""
    path = Path(entry).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
        if not found:
            raise FileNotFoundError(f"directory {path} has no {', '.join(sorted(BUILDERS))} files")
        return found
    if path.is_file():
        return [path]
    if _GLOB_CHARS.intersection(entry):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if found:
            return found
        raise FileNotFoundError(f"data path pattern {entry!r} matches no files")
    raise FileNotFoundError(f"data path {entry!r} does not exist")


def _read_file(path: Path, text_field: str, cache_dir: str | Path | None, txt_sample_by: str) -> list[str]:
    """Texts of one file via its `datasets` builder, checking that the text field exists."""
    from datasets import load_dataset

    builder = BUILDERS[path.suffix.lower()]
    options = {"sample_by": txt_sample_by} if builder == "text" else {}
    field = "text" if builder == "text" else text_field
    dataset = load_dataset(
        builder,
        data_files=[str(path)],
        split="train",
        cache_dir=None if cache_dir is None else str(cache_dir),
        **options,
    )
    if field not in dataset.column_names:
        raise ValueError(f"{path}: no field {field!r}; fields present: {dataset.column_names}")
    texts = dataset[field]
    for index, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{path}: row {index} field {field!r} is {type(text).__name__}, not a string")
    return [text for text in texts if text]
