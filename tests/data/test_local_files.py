"""Reading documents from local jsonl / json / parquet / txt files, globs and directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcpretrain.data.local_files import read_documents

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
MILTON = SHARED / "data" / "milton"


@pytest.fixture(scope="module")
def milton() -> Path:
    if not MILTON.is_dir():
        pytest.skip(f"shared test data not found at {MILTON.resolve()} (expected beside the repository)")
    return MILTON


@pytest.fixture
def hf_cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def jsonl_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_file(milton: Path, hf_cache: Path) -> None:
    shard = milton / "validation.jsonl"
    assert read_documents([str(shard)], cache_dir=hf_cache) == jsonl_texts(shard)


def test_glob_and_directory(milton: Path, hf_cache: Path) -> None:
    shards = sorted(milton.glob("train-*.jsonl"))
    expected = [text for shard in shards for text in jsonl_texts(shard)]
    assert read_documents([str(milton / "train-*.jsonl")], cache_dir=hf_cache) == expected
    everything = read_documents([str(milton)], cache_dir=hf_cache)  # README.md is ignored
    assert everything == expected + jsonl_texts(milton / "validation.jsonl")


def test_txt_files(tmp_path: Path, hf_cache: Path) -> None:
    (tmp_path / "a.txt").write_text("First paragraph\nstill first.\n\nSecond paragraph.\n")
    (tmp_path / "b.txt").write_text("Another file.\n")
    docs = read_documents([str(tmp_path / "*.txt")], cache_dir=hf_cache)
    assert [d.strip() for d in docs] == [
        "First paragraph\nstill first.\n\nSecond paragraph.",
        "Another file.",
    ]
    paragraphs = read_documents([str(tmp_path / "a.txt")], cache_dir=hf_cache, txt_sample_by="paragraph")
    assert [p.strip() for p in paragraphs] == ["First paragraph\nstill first.", "Second paragraph."]


def test_parquet_and_json_with_custom_field(tmp_path: Path, hf_cache: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"body": ["alpha", "", "beta"], "id": [1, 2, 3]}), data / "part-0.parquet")
    (data / "part-1.json").write_text(json.dumps([{"body": "gamma", "id": 4}, {"body": None, "id": 5}]))
    assert read_documents([str(data)], text_field="body", cache_dir=hf_cache) == ["alpha", "beta", "gamma"]


def test_missing_field_names_file_and_fields(tmp_path: Path, hf_cache: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"content": "hello", "source": "x"}) + "\n")
    with pytest.raises(
        ValueError, match=r"docs\.jsonl: no field 'text'; fields present: \['content', 'source'\]"
    ):
        read_documents([str(path)], cache_dir=hf_cache)


def test_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        read_documents([str(tmp_path / "nowhere.jsonl")])
    with pytest.raises(FileNotFoundError, match=r"shard-\*\.jsonl' matches no files"):
        read_documents([str(tmp_path / "shard-*.jsonl")])
    with pytest.raises(FileNotFoundError, match="has no"):
        read_documents([str(tmp_path)])


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# hi\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.md' for .*notes\.md"):
        read_documents([str(path)])


def test_empty_result(tmp_path: Path, hf_cache: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(ValueError, match="no non-empty documents"):
        read_documents([str(path)], cache_dir=hf_cache)
