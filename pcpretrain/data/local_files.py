"""Resolve local data paths (files, globs, directories) into the supported files, in a stable order.

The files are then read by `pcpretrain.data.sources` through `datasets` builders, one shard each.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

# File suffix -> `datasets` packaged builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
_GLOB_CHARS = frozenset("*?[")


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
