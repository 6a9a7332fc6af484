"""The schedule preview: a table that matches the schedule functions, and a real PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcpretrain.analysis.schedule_preview import plot_schedule, preview_steps, schedule_table
from pcpretrain.config import SchedulerConfig
from pcpretrain.optim.schedules import SCHEDULES, schedule_function

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(text: str) -> list[list[str]]:
    header, *rows = text.splitlines()
    assert header.split() == ["step", "multiplier", "lr"]
    return [row.split() for row in rows]


def test_preview_steps_are_evenly_spaced_from_the_first_to_the_last_step() -> None:
    assert preview_steps(101, 11) == list(range(0, 101, 10))
    assert preview_steps(100, 11)[0] == 0
    assert preview_steps(100, 11)[-1] == 99
    assert preview_steps(4, 11) == [0, 1, 2, 3]
    assert preview_steps(1, 11) == [0]


@pytest.mark.parametrize(("total", "points"), [(0, 11), (10, 1)])
def test_preview_steps_rejects_an_empty_run_or_a_single_point(total: int, points: int) -> None:
    with pytest.raises(ValueError, match="must be >="):
        preview_steps(total, points)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_table_has_one_row_per_point_with_the_schedule_values(name: str) -> None:
    cfg = SchedulerConfig(name=name, warmup_steps=10, end_ratio=0.1)
    rows = table_rows(schedule_table(cfg, total_steps=200, peak_lr=3e-4, points=11))
    assert len(rows) == 11
    assert int(rows[0][0]) == 0
    assert int(rows[-1][0]) == 199
    schedule = schedule_function(cfg, 200)
    for step, multiplier, lr in rows:
        assert float(multiplier) == pytest.approx(schedule(int(step)), abs=5e-5)
        assert float(lr) == pytest.approx(3e-4 * schedule(int(step)), rel=1e-3)


def test_table_columns_are_right_aligned() -> None:
    lines = schedule_table(SchedulerConfig(), total_steps=1000, peak_lr=1e-3).splitlines()
    assert len({len(line) for line in lines}) == 1


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cfg = SchedulerConfig(name="wsd", warmup_steps=100, end_ratio=0.0)
    out = plot_schedule(cfg, total_steps=50_000, peak_lr=3e-4, out_png=tmp_path / "plots" / "lr.png")
    assert out == tmp_path / "plots" / "lr.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000
