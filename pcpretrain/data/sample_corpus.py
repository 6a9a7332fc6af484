"""The embedded default corpus: docstrings of the running Python's standard library.

Every Python installation carries about 1.6 MB of real English technical prose in its standard
library docstrings, so `pcpretrain train` can run end to end with no download. Docstrings are
read with `ast` (modules are never imported, so no side effects) in sorted-path order, which makes
the corpus deterministic for a given Python version.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from pcpretrain.files import atomic_write_text

# Bump when the extraction rules change, so stale caches are not reused.
CORPUS_FORMAT_VERSION = 1
MIN_DOCSTRING_CHARS = 40
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
)

_DOCSTRING_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def stdlib_root() -> Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """Sorted `.py` files of the standard library, without tests, IDLE, lib2to3 and third-party dirs."""
    root = stdlib_root() if root is None else root
    files = [
        path
        for path in root.rglob("*.py")
        if not EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def normalize_docstring(text: str) -> str:
    """Dedent, strip trailing spaces and collapse blank-line runs, keeping paragraph breaks."""
    lines = [line.rstrip() for line in text.expandtabs(8).splitlines()]
    return _BLANK_LINE_RUN.sub("\n\n", "\n".join(lines)).strip()


def docstrings_of(source: bytes | str) -> list[str]:
    """Module, class and function docstrings of one source file, in `ast.walk` order.

    Returns an empty list for files that do not parse (the stdlib ships a few deliberately broken
    ones, e.g. bad-syntax fixtures).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old docstrings
            tree = ast.parse(source)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, _DOCSTRING_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                doc = normalize_docstring(doc)
                if len(doc) >= MIN_DOCSTRING_CHARS:
                    found.append(doc)
    return found


def iter_stdlib_docstrings(root: Path | None = None) -> Iterator[str]:
    """Yield the docstrings of all standard-library files in deterministic order."""
    for path in stdlib_source_files(root):
        try:
            source = path.read_bytes()
        except OSError:
            continue
        yield from docstrings_of(source)


def cache_file_name() -> str:
    """Cache file name, keyed by interpreter implementation, version and the extraction rules."""
    impl = sys.implementation.name
    version = ".".join(str(part) for part in sys.version_info[:3])
    return f"stdlib-docstrings-{impl}{version}-v{CORPUS_FORMAT_VERSION}.jsonl"


def sample_documents(cache_dir: Path) -> list[str]:
    """The default corpus as a list of documents, built once and cached as jsonl in `cache_dir`."""
    cache_path = Path(cache_dir) / cache_file_name()
    cached = _read_jsonl_texts(cache_path)
    if cached is not None:
        return cached
    documents = list(iter_stdlib_docstrings())
    if not documents:
        raise RuntimeError(f"no docstrings found under the standard library at {stdlib_root()}")
    _write_jsonl_texts_atomic(cache_path, documents)
    return documents


def split_documents(documents: Sequence[str], validation_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic document-level split: every k-th document (k = round(1 / fraction)) is held out.

    Striding rather than taking a tail spreads the held-out set over the whole (sorted) corpus, so
    validation text comes from the same mix of modules as training text.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0.0:
        return list(documents), []
    stride = max(2, round(1.0 / validation_fraction))
    train = [doc for i, doc in enumerate(documents) if i % stride != stride - 1]
    validation = [doc for i, doc in enumerate(documents) if i % stride == stride - 1]
    return train, validation


def _read_jsonl_texts(path: Path) -> list[str] | None:
    """Texts of a cached jsonl file, or None when it is absent or unreadable (then it is rebuilt)."""
    try:
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line)["text"] for line in handle if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_jsonl_texts_atomic(path: Path, texts: Sequence[str]) -> None:
    """Write the texts as a jsonl file atomically, so readers never see a partial cache."""
    atomic_write_text(path, "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts))
