"""Resolving local data paths: files, globs and directories, with errors that name the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcpretrain.data.local_files import resolve_files


def make(tmp_path: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
        paths.append(path)
    return paths


def test_files_globs_and_directories_in_a_stable_order(tmp_path: Path) -> None:
    b, a, c, _ = make(tmp_path, "b.jsonl", "a.jsonl", "sub/c.jsonl", "sub/README.md")
    assert resolve_files([str(tmp_path / "*.jsonl")]) == [a, b]
    assert resolve_files([str(tmp_path)]) == [a, b, c]
    assert resolve_files([str(c), str(a)]) == [c, a]


def test_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        resolve_files([str(tmp_path / "nowhere.jsonl")])
    with pytest.raises(FileNotFoundError, match=r"shard-\*\.jsonl' matches no files"):
        resolve_files([str(tmp_path / "shard-*.jsonl")])
    with pytest.raises(FileNotFoundError, match="has no"):
        resolve_files([str(tmp_path)])


def test_unsupported_extension(tmp_path: Path) -> None:
    (path,) = make(tmp_path, "notes.md")
    with pytest.raises(ValueError, match=r"unsupported file type '\.md' for .*notes\.md"):
        resolve_files([str(path)])
