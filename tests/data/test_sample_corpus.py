"""The embedded default corpus: standard-library docstrings, deterministic and cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcpretrain.data import sample_corpus
from pcpretrain.data.sample_corpus import (
    MIN_DOCSTRING_CHARS,
    cache_file_name,
    docstrings_of,
    iter_stdlib_docstrings,
    sample_documents,
    split_documents,
    stdlib_root,
    stdlib_source_files,
)


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Build the full corpus once for this module (a few seconds)."""
    cache = tmp_path_factory.mktemp("corpus")
    return cache, sample_documents(cache)


def test_corpus_is_large_real_text(corpus_cache: tuple[Path, list[str]]) -> None:
    _, docs = corpus_cache
    assert len(docs) > 1000
    assert sum(map(len, docs)) > 500_000
    assert all(len(doc) >= MIN_DOCSTRING_CHARS for doc in docs)
    assert all(doc == doc.strip() and "\n\n\n" not in doc for doc in docs)
    assert any("\n\n" in doc for doc in docs), "paragraph breaks are kept"


def test_corpus_is_cached_atomically(corpus_cache: tuple[Path, list[str]], monkeypatch) -> None:
    cache, docs = corpus_cache
    assert [p.name for p in cache.iterdir()] == [cache_file_name()], "one cache file, no temp files left"

    def fail() -> None:
        raise AssertionError("the corpus was rebuilt instead of read from the cache")

    monkeypatch.setattr(sample_corpus, "iter_stdlib_docstrings", fail)
    assert sample_documents(cache) == docs


def test_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / cache_file_name()).write_text("{not json\n")
    monkeypatch.setattr(sample_corpus, "iter_stdlib_docstrings", lambda: iter(["x" * 50]))
    assert sample_documents(tmp_path) == ["x" * 50]
    lines = (tmp_path / cache_file_name()).read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["x" * 50]


def test_extraction_is_deterministic() -> None:
    root = stdlib_root() / "json"
    first = list(iter_stdlib_docstrings(root))
    assert first and first == list(iter_stdlib_docstrings(root))


def test_source_files_skip_tests_and_tools() -> None:
    root = stdlib_root()
    files = stdlib_source_files(root)
    relative = [f.relative_to(root).as_posix() for f in files]
    assert relative == sorted(relative)
    banned = {"test", "tests", "idlelib", "lib2to3", "site-packages"}
    assert not any(banned.intersection(Path(r).parts[:-1]) for r in relative)
    assert "json/__init__.py" in relative


def test_docstrings_of_modules_classes_functions() -> None:
    source = '''
"""Module docstring that is certainly longer than forty characters."""

class A:
    """Class docstring, also comfortably longer than forty characters.


    Second paragraph after extra blank lines.   """

    def f(self):
        """Too short."""

async def g():
    """An async function docstring that is long enough to keep around."""
'''
    docs = docstrings_of(source)
    assert docs[0] == "Module docstring that is certainly longer than forty characters."
    assert docs[1] == (
        "Class docstring, also comfortably longer than forty characters.\n\n"
        "Second paragraph after extra blank lines."
    )
    assert docs[2].startswith("An async function docstring")
    assert len(docs) == 3


def test_unparsable_source_gives_nothing() -> None:
    assert docstrings_of("def broken(:\n    '''A docstring that would be long enough to keep.'''") == []


def test_split_every_kth_document() -> None:
    docs = [f"doc {i}" for i in range(100)]
    train, val = split_documents(docs, 0.1)
    assert val == [f"doc {i}" for i in range(9, 100, 10)]
    assert sorted(train + val, key=lambda d: int(d.split()[1])) == docs
    assert split_documents(docs, 0.1) == (train, val)
    assert split_documents(docs, 0.0) == (docs, [])
    with pytest.raises(ValueError, match="validation_fraction"):
        split_documents(docs, 1.0)
