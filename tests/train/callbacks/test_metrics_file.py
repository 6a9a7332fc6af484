"""metrics.jsonl stays consistent with the step a run continues from."""

from __future__ import annotations

import json
from pathlib import Path

from pcpretrain.train.callbacks.metrics_file import read_metrics, truncate_after


def test_truncate_after_drops_records_past_the_resumed_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)))
    truncate_after(path, 4)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    truncate_after(path, 0)
    assert read_metrics(path) == []


def test_missing_file_has_no_records(tmp_path: Path) -> None:
    truncate_after(tmp_path / "none.jsonl", 3)
    assert read_metrics(tmp_path / "none.jsonl") == []
