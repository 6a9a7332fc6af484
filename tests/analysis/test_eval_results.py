"""eval.json accumulates over calls, starts afresh for another step, and is replaced atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pcpretrain.analysis.eval_results import EVAL_FILE, read_eval, read_scores, scores_table, write_eval


def _document(step: int | None, scores: dict[str, float], **details) -> dict:
    return {"model_dir": "/m", "step": step, "scores": scores, "details": details, "settings": {}}


def test_calls_accumulate_and_a_repeated_score_is_replaced(tmp_path: Path) -> None:
    write_eval(tmp_path, _document(5, {"piqa/acc": 0.5}, lm_eval={"results": {"piqa": {"acc,none": 0.5}}}))
    write_eval(
        tmp_path, _document(5, {"ppl/a.jsonl/loss": 2.0, "piqa/acc": 0.75}, **{"ppl/a.jsonl": {"tokens": 64}})
    )
    merged = write_eval(
        tmp_path, _document(5, {}, lm_eval={"results": {"arc": {"acc,none": np.float64(0.25)}}})
    )
    assert read_scores(tmp_path) == {"piqa/acc": 0.75, "ppl/a.jsonl/loss": 2.0}
    assert merged["details"]["lm_eval"]["results"] == {"piqa": {"acc,none": 0.5}, "arc": {"acc,none": 0.25}}
    assert merged["details"]["ppl/a.jsonl"] == {"tokens": 64}
    assert json.loads((tmp_path / EVAL_FILE).read_text()) == merged
    assert [p.name for p in tmp_path.iterdir()] == [EVAL_FILE]  # no temporary file left behind


def test_another_step_replaces_the_old_scores(tmp_path: Path) -> None:
    write_eval(tmp_path, _document(5, {"piqa/acc": 0.5}))
    write_eval(tmp_path, _document(9, {"ppl/a.jsonl/loss": 2.0}))
    assert read_eval(tmp_path)["step"] == 9
    assert read_scores(tmp_path) == {"ppl/a.jsonl/loss": 2.0}


def test_a_missing_file_reads_empty_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    assert read_eval(tmp_path) == {} and read_scores(tmp_path) == {}
    (tmp_path / EVAL_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=EVAL_FILE):
        read_eval(tmp_path)


def test_the_table_lists_scores_by_name() -> None:
    table = scores_table({"ppl/a.jsonl/perplexity": 123.456789, "arc/acc": 0.25})
    assert table.splitlines() == [
        "score                      value",
        "arc/acc                   0.2500",
        "ppl/a.jsonl/perplexity  123.4568",
    ]
