"""Sharded streaming text sources: local files and Hub-style datasets, one shard per file, resumable."""

from __future__ import annotations

import json
import os
import pickle
import re
from collections import Counter
from pathlib import Path

import pytest

# Before `datasets` is imported: everything here is local and must never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pcpretrain.data.sources import DataSourceError, TextSource, open_text_source  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MILTON = SHARED / "data" / "milton"


@pytest.fixture(scope="module")
def milton() -> Path:
    if not MILTON.is_dir():
        pytest.skip(f"shared test data not found at {MILTON} (expected beside the repository)")
    return MILTON


@pytest.fixture(scope="module")
def milton_train(milton: Path) -> list[Path]:
    return sorted(milton.glob("train-*.jsonl"))


def jsonl_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def shard_texts(source: TextSource) -> list[list[str]]:
    return [list(source.iter_shard(index)) for index in range(source.num_shards)]


# --- local files --------------------------------------------------------------------------------------------


def test_milton_one_shard_per_file_same_documents(milton: Path, milton_train: list[Path]) -> None:
    source = TextSource.from_files([str(milton / "train-*.jsonl")])
    source.check()
    assert source.num_shards == source.dataset.num_shards == len(milton_train) == 4
    shards = shard_texts(source)
    assert shards == [jsonl_texts(path) for path in milton_train]  # shard i is file i, in order
    assert Counter(text for shard in shards for text in shard) == Counter(
        text for path in milton_train for text in jsonl_texts(path)
    )
    assert [source.describe_shard(index) for index in range(4)] == [str(path) for path in milton_train]


def test_resume_from_start_matches_slice(milton: Path) -> None:
    source = TextSource.from_files([str(milton / "train-00001-of-00004.jsonl")])
    texts = list(source.iter_shard(0))
    for start in (0, 1, 30, len(texts) - 1, len(texts), len(texts) + 5):
        assert list(source.iter_shard(0, start=start)) == texts[start:]


def test_positions_count_empty_rows_and_cross_batches(tmp_path: Path) -> None:
    texts = [f"doc {i}" if i % 7 else ("" if i % 2 else None) for i in range(700)]
    source = TextSource.from_files([str(write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts]))])
    for start in (0, 1, 7, 8, 255, 256, 300, 699, 700):
        assert list(source.iter_shard(0, start=start)) == [t or "" for t in texts[start:]]


def test_directory_recursive_and_heterogeneous_fields(tmp_path: Path) -> None:
    nested = tmp_path / "corpus" / "part"
    nested.mkdir(parents=True)
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": "alpha", "source": "x"}])
    write_jsonl(nested / "b.jsonl", [{"text": "beta", "id": 3, "meta": {"k": 1}}, {"text": None}])
    (nested / "notes.md").write_text("ignored: not a supported suffix")
    source = TextSource.from_files([str(tmp_path / "corpus")])
    assert source.num_shards == 2
    assert shard_texts(source) == [["alpha"], ["beta", ""]]


def test_parquet_one_shard_per_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {name: [f"{name}-{i}" for i in range(10)] for name in ("p0", "p1", "p2")}
    for name, texts in rows.items():
        table = pa.table({"body": texts, "n": list(range(len(texts)))})
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=3)
    source = TextSource.from_files([str(tmp_path / "*.parquet")], text_field="body")
    assert source.num_shards == source.dataset.num_shards == 3
    assert shard_texts(source) == list(rows.values())
    assert list(source.iter_shard(1, start=4)) == rows["p1"][4:]


def test_txt_paragraphs_one_shard_per_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("First paragraph\nstill first.\n\nSecond paragraph.\n")
    (tmp_path / "b.txt").write_text("Another file.\n")
    source = TextSource.from_files([str(tmp_path)], text_field="ignored-for-txt")
    assert source.num_shards == source.dataset.num_shards == 2
    assert [[text.strip() for text in shard] for shard in shard_texts(source)] == [
        ["First paragraph\nstill first.", "Second paragraph."],
        ["Another file."],
    ]
    assert [text.strip() for text in source.iter_shard(0, start=1)] == ["Second paragraph."]


def test_first_documents_follow_shard_order(milton_train: list[Path]) -> None:
    source = TextSource.from_files([str(path) for path in milton_train])
    first, second = jsonl_texts(milton_train[0]), jsonl_texts(milton_train[1])
    assert source.first_documents(0) == []
    assert source.first_documents(3) == first[:3]
    assert source.first_documents(len(first) + 2) == first + second[:2]
    everything = [text for path in milton_train for text in jsonl_texts(path)]
    assert source.first_documents(10_000) == everything


def test_sources_survive_pickling(milton: Path, milton_train: list[Path]) -> None:
    for source in (TextSource.from_files([str(milton_train[1])]), TextSource.from_hub(str(milton))):
        copy = pickle.loads(pickle.dumps(source))
        assert copy.num_shards == source.num_shards
        assert list(copy.iter_shard(0, start=2)) == list(source.iter_shard(0, start=2))


def test_workers_read_whole_shards_in_dataloader(milton_train: list[Path]) -> None:
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    source = TextSource.from_files([str(path) for path in milton_train])

    class Shards(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            for index in range(info.id, source.num_shards, info.num_workers):
                for text in source.iter_shard(index):
                    yield index, text

    seen = list(DataLoader(Shards(), batch_size=None, num_workers=2))
    assert len(seen) == sum(len(jsonl_texts(path)) for path in milton_train)
    for index, path in enumerate(milton_train):
        assert [text for shard, text in seen if shard == index] == jsonl_texts(path)


# --- the Hub code path, offline through a local directory laid out like a Hub repository -------------------


def test_hub_path_matches_files(milton: Path, milton_train: list[Path]) -> None:
    hub = TextSource.from_hub(str(milton), split="train")
    hub.check()
    files = TextSource.from_files([str(path) for path in milton_train])
    assert hub.num_shards == files.num_shards == 4
    assert shard_texts(hub) == shard_texts(files)
    assert list(hub.iter_shard(2, start=5)) == list(files.iter_shard(2, start=5))
    assert milton_train[3].name in hub.describe_shard(3)
    assert hub.first_documents(4) == files.first_documents(4)
    validation = TextSource.from_hub(str(milton), split="validation")
    assert shard_texts(validation) == [jsonl_texts(milton / "validation.jsonl")]


def test_open_text_source(milton: Path, milton_train: list[Path]) -> None:
    files = open_text_source("files", paths=[str(path) for path in milton_train])
    hub = open_text_source("hub", hub_path=str(milton), split="validation")
    assert files.num_shards == 4 and hub.num_shards == 1
    with pytest.raises(DataSourceError, match="unknown source kind 'web'; expected one of files, hub"):
        open_text_source("web")
    with pytest.raises(DataSourceError, match="needs paths"):
        open_text_source("files")
    with pytest.raises(DataSourceError, match="needs hub_path"):
        open_text_source("hub")


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="nowhere.jsonl"):
        TextSource.from_files([str(tmp_path / "nowhere.jsonl")])
    with pytest.raises(DataSourceError, match=r"shard-\*\.jsonl' matches no files"):
        TextSource.from_files([str(tmp_path / "shard-*.jsonl")])
    with pytest.raises(DataSourceError, match="no data paths given"):
        TextSource.from_files([])
    with pytest.raises(DataSourceError, match=r"cannot open Hub dataset .*missing-dir"):
        TextSource.from_hub(str(tmp_path / "missing-dir"))


def test_unsupported_and_mixed_suffixes(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("text\nhello\n")
    with pytest.raises(DataSourceError, match=r"unsupported file type '\.csv' for .*table\.csv"):
        TextSource.from_files([str(tmp_path / "table.csv")])
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    pq.write_table(pa.table({"text": ["b"]}), tmp_path / "b.parquet")
    with pytest.raises(
        DataSourceError, match=r"one format; found json \(.*a\.jsonl\), parquet \(.*b\.parquet\)"
    ):
        TextSource.from_files([str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")])


def test_empty_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataSourceError, match=r"empty\.jsonl has no rows"):
        TextSource.from_files([str(tmp_path / "empty.jsonl")])

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl", [{"text": "a"}])
    (data / "b.jsonl").write_text("")
    source = TextSource.from_files([str(data)])
    source.check()  # shard 0 is fine; the empty file shows when its shard is read
    with pytest.raises(DataSourceError, match=r"b\.jsonl has no rows"):
        list(source.iter_shard(1))

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    source = TextSource.from_files([str(tmp_path / "empty.parquet")])
    with pytest.raises(DataSourceError, match=r"empty\.parquet has no rows"):
        source.check()
    with pytest.raises(DataSourceError, match=r"empty\.parquet has no rows"):
        list(source.iter_shard(0))
    assert list(TextSource.from_files([str(data / "a.jsonl")]).iter_shard(0, start=3)) == []  # past the end


def test_missing_field_names_file_and_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", [{"content": "hello", "source": "x"}])
    source = TextSource.from_files([str(path)])
    expected = r"docs\.jsonl: no field 'text'; fields present: \['content', 'source'\]"
    with pytest.raises(DataSourceError, match=expected):
        source.check()
    with pytest.raises(DataSourceError, match=expected):
        list(source.iter_shard(0))


def test_missing_field_through_hub_path(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "hello", "source": "x"}])
    source = TextSource.from_hub(str(tmp_path), text_field="body")
    with pytest.raises(
        DataSourceError, match=r"shard 0 of 1 \(.*train\.jsonl\): no field 'body'; fields pre"
    ):
        source.check()


def test_invalid_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "bad.txt").write_bytes(b"fine\n\ncaf\xe9\n")
    for name in ("bad.jsonl", "bad.txt"):
        source = TextSource.from_files([str(tmp_path / name)])
        with pytest.raises(DataSourceError, match=re.escape(name) + " is not valid UTF-8"):
            list(source.iter_shard(0))


def test_non_string_text_field(tmp_path: Path) -> None:
    numbers = TextSource.from_files([str(write_jsonl(tmp_path / "n.jsonl", [{"text": 5}, {"text": 6}]))])
    with pytest.raises(DataSourceError, match=r"n\.jsonl: field 'text' holds int64 values, expected strings"):
        numbers.check()
    mixed = TextSource.from_files([str(write_jsonl(tmp_path / "m.jsonl", [{"text": "a"}, {"text": 5}]))])
    with pytest.raises(DataSourceError, match=r"m\.jsonl: field 'text' holds .* values, expected strings"):
        list(mixed.iter_shard(0))


def test_bad_shard_index_and_start(milton_train: list[Path]) -> None:
    source = TextSource.from_files([str(milton_train[0])])
    with pytest.raises(IndexError, match="shard 1 out of range"):
        source.iter_shard(1)
    with pytest.raises(ValueError, match="start must be >= 0"):
        source.iter_shard(0, start=-1)


def test_a_json_parse_error_names_the_line_of_the_file(tmp_path: Path) -> None:
    """pyarrow counts rows from 0 over non-blank lines; the message names the 1-based line instead."""
    path = tmp_path / "docs.jsonl"
    good = [json.dumps({"text": f"document {i}"}) for i in range(10)]
    path.write_text("\n".join([*good[:4], "", *good[4:], "{broken json"]) + "\n")
    with pytest.raises(DataSourceError, match=rf"{re.escape(str(path))} could not be read: .* on line 12$"):
        list(TextSource.from_files([str(path)]).iter_shard(0))
