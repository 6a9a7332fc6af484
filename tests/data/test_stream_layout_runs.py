"""Through the CLI: the global batches and losses do not depend on processes x loader workers, for
text files, token shards and a mixture; a run resumes exactly on another process count."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, read_metrics, run_cli

pytestmark = pytest.mark.slow

# Processes and loader workers per process; the middle layout only for files, to keep the suite short.
LAYOUTS = {
    "files": [(1, 0), (2, 0), (2, 2)],
    "shards": [(1, 0), (2, 2)],
    "mixture": [(1, 0), (2, 2)],
}
COMMON = [*TINY_OVERRIDES, "trainer.max_steps=3", "trainer.eval_every=3", "logger.batch_hash=true"]


@pytest.fixture(scope="module")
def milton_shards(milton: Path, llama2_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokens") / "train"
    parts = [str(milton / f"train-0000{k}-of-00004.jsonl") for k in (2, 3)]
    run_cli("tokenize", *parts, "--tokenizer", str(llama2_model), "--out", str(out))
    return out


def source_overrides(kind: str, milton: Path, llama2_model: Path, shards: Path) -> list[str]:
    """Milton's text through each kind of source, with the Llama-2 tokenizer."""
    files = "[" + ",".join(f"{milton}/train-0000{k}-of-00004.jsonl" for k in (0, 1)) + "]"
    by_kind = {
        "files": ["data=files", f"data.train_files={files}"],
        "shards": ["data=shards", f"data.shards_dir={shards}"],
        "mixture": [
            "data=files",
            "data.source=mixture",
            "+data.mixture=[{source: files, weight: 2, train_files: " + files + "}, "
            "{source: shards, weight: 1, shards_dir: " + str(shards) + "}]",
        ],
    }
    return [
        *by_kind[kind],
        f"data.validation_files=[{milton}/validation.jsonl]",
        f"data.tokenizer.path={llama2_model}",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
    ]


@pytest.mark.parametrize("kind", ["files", "shards", "mixture"])
def test_the_same_batches_on_any_processes_and_workers(
    kind: str, milton: Path, llama2_model: Path, milton_shards: Path, tmp_path: Path
) -> None:
    runs = []
    for processes, workers in LAYOUTS[kind]:
        run_dir = tmp_path / f"{processes}x{workers}"
        overrides = [*COMMON, *source_overrides(kind, milton, llama2_model, milton_shards)]
        run_cli("train", *overrides, f"data.num_workers={workers}", f"run.dir={run_dir}", nproc=processes)
        runs.append(read_metrics(run_dir))
    single = runs[0]
    assert [r["step"] for r in single] == [1, 2, 3]
    assert len({r["batch_hash"] for r in single}) == 3
    for other in runs[1:]:
        assert [r["batch_hash"] for r in other] == [r["batch_hash"] for r in single]
        for one, two in zip(single, other, strict=True):
            assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
        assert other[-1]["val_loss"] == pytest.approx(single[-1]["val_loss"], abs=1e-5)


RESUME = [*TINY_OVERRIDES, "trainer.max_steps=6", "logger.batch_hash=true"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run_cli("train", *RESUME, f"run.dir={run_dir}")
    return read_metrics(run_dir)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_run_stopped_on_one_process_count_resumes_exactly_on_another(
    before: int, after: int, straight: list[dict], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_cli("train", *RESUME, "trainer.stop_at=4", f"run.dir={run_dir}", nproc=before)
    run_cli("train", *RESUME, f"run.dir={run_dir}", nproc=after)
    resumed = read_metrics(run_dir)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["batch_hash"] for r in resumed] == [r["batch_hash"] for r in straight]
    for one, two in zip(straight, resumed, strict=True):
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)


def test_a_reader_count_that_does_not_divide_the_streams_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("train", *TINY_OVERRIDES, "data.num_workers=3", f"run.dir={run_dir}", expect_ok=False)
    assert result.returncode == 2
    assert "= 3 readers" in result.stderr and "1, 2, 4, 8, 16" in result.stderr
    assert not run_dir.exists()
