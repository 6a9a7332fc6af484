"""Comparing run directories: discovery, per-run summaries, the table and the validation plot."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pcpretrain.analysis.compare import (
    RunRow,
    compare,
    find_runs,
    format_table,
    plot_validation_curves,
    read_records,
    summarize_run,
    validation_curve,
)
from pcpretrain.config import TrainConfig, to_yaml

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path, name: str, *, degree: int, lr: float, steps: int = 20, val_every: int | None = 5
) -> Path:
    """A run directory as training leaves it: the full config and one record per step."""
    run = root / name
    run.mkdir(parents=True)
    cfg = TrainConfig()
    cfg.pc.degree, cfg.optimizer.lr, cfg.trainer.max_steps = degree, lr, 40
    (run / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    with (run / "metrics.jsonl").open("w", encoding="utf-8") as handle:
        for step in range(1, steps + 1):
            record = {"step": step, "loss": 10.0 - step / 10 - degree, "lr": lr, "tokens": 1000 * step}
            record["tokens_per_s"] = 5000.0 if step % 2 else 7000.0
            if val_every and step % val_every == 0:
                record["val_loss"] = 11.0 - step / 10 - degree
            handle.write(json.dumps(record) + "\n")
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    make_run(root, "pc.degree=4", degree=4, lr=3e-4)
    make_run(root, "pc.degree=0", degree=0, lr=1e-3)
    make_run(root, "pc.degree=2", degree=2, lr=3e-4, steps=7, val_every=None)
    (root / "notes").mkdir()
    return root


def test_find_runs_expands_a_sweep_and_keeps_single_runs(sweep: Path) -> None:
    names = [run.name for run in find_runs([sweep])]
    assert names == ["pc.degree=0", "pc.degree=2", "pc.degree=4"]
    assert find_runs([sweep / "pc.degree=4"]) == [sweep / "pc.degree=4"]
    assert len(find_runs([sweep, sweep / "pc.degree=4"])) == 3


def test_find_runs_names_a_path_without_runs(tmp_path: Path, sweep: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: no runs found"):
        find_runs([sweep, empty])
    with pytest.raises(FileNotFoundError, match="missing"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no paths"):
        find_runs([])


def test_a_run_dir_needs_both_files(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run", degree=0, lr=1e-3)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(ValueError, match="no runs found"):
        find_runs([run])


def test_summary_takes_config_values_and_the_tail_of_the_metrics(sweep: Path) -> None:
    row = summarize_run(sweep / "pc.degree=4")
    losses = [10.0 - step / 10 - 4 for step in (19, 20)]
    assert row == RunRow(
        name="pc.degree=4",
        optimizer="adamw",
        degree=4,
        lr=3e-4,
        steps=20,
        final_train_loss=pytest.approx(sum(losses) / 2),
        final_val_loss=pytest.approx(11.0 - 2.0 - 4),
        tokens=20_000,
        tokens_per_s=6000.0,
        max_steps=40,
    )


def test_summary_of_a_short_run_without_validation(sweep: Path) -> None:
    row = summarize_run(sweep / "pc.degree=2")
    assert row.final_train_loss == pytest.approx(10.0 - 0.7 - 2)
    assert row.final_val_loss is None
    assert row.steps == 7


def test_summary_of_a_run_that_has_logged_nothing_yet(tmp_path: Path) -> None:
    run = make_run(tmp_path, "fresh", degree=1, lr=1e-3, steps=0)
    row = summarize_run(run)
    assert (row.steps, row.final_train_loss, row.tokens, row.tokens_per_s) == (0, None, None, None)


def test_a_half_written_last_record_is_skipped_but_a_broken_middle_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    assert read_records(path) == [{"step": 1, "loss": 2.0}]
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 2.0}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        read_records(path)


def test_a_config_without_the_compared_keys_is_named(tmp_path: Path) -> None:
    run = make_run(tmp_path, "odd", degree=0, lr=1e-3)
    OmegaConf.save(OmegaConf.create({"optimizer": {"name": "adamw"}}), run / "config.yaml")
    with pytest.raises(ValueError, match="config.yaml: has no pc.degree"):
        summarize_run(run)


def test_table_is_sorted_by_optimizer_then_degree_and_aligned(sweep: Path) -> None:
    rows = [summarize_run(run) for run in find_runs([sweep])]
    rows.append(RunRow("sgd-run", "adamw_pc", 1, 1e-2, 3, 4.0, None, 3000, 900.0))
    header, *lines = format_table(rows).splitlines()
    columns = ["optimizer", "degree", "lr", "steps", "train loss", "val loss", "tokens", "tokens/s", "run"]
    assert re.split(r"\s{2,}", header.strip()) == columns
    assert [line.split()[-1] for line in lines] == ["pc.degree=0", "pc.degree=2", "pc.degree=4", "sgd-run"]
    assert lines[0].split()[:8] == ["adamw", "0", "0.001", "20/40", "8.0500", "9.0000", "20k", "6k"]
    assert lines[1].split()[5] == "-"
    assert lines[3].split()[:4] == ["adamw_pc", "1", "0.01", "3"]
    assert header.index("run") == lines[0].index("pc.degree=0")
    assert header.index("tokens/s") + len("tokens/s") == lines[0].index("6k") + len("6k")


def test_validation_curve_is_val_loss_against_tokens(sweep: Path) -> None:
    tokens, losses = validation_curve(sweep / "pc.degree=0")
    assert tokens == [5000, 10000, 15000, 20000]
    assert losses == pytest.approx([10.5, 10.0, 9.5, 9.0])
    assert validation_curve(sweep / "pc.degree=2") == ([], [])


def test_plot_skips_runs_without_validation_and_says_so(
    sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("matplotlib")
    with caplog.at_level(logging.WARNING):
        out = plot_validation_curves(find_runs([sweep]), tmp_path / "out" / "val.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert out.stat().st_size > 5_000
    assert "not plotted: pc.degree=2" in caplog.text


def test_plot_without_any_validation_still_writes_a_png(sweep: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = plot_validation_curves([sweep / "pc.degree=2"], tmp_path / "val.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_compare_returns_the_table_and_writes_the_plot(sweep: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "val.png"
    text = compare([sweep], out)
    assert text.splitlines()[0].startswith("optimizer")
    assert f"validation curves: {out}" in text
    assert text.splitlines()[-1] == "no val_loss logged yet, so not in the plot: pc.degree=2"
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_compare_without_a_plot_gives_only_the_table(sweep: Path) -> None:
    text = compare([sweep / "pc.degree=4", sweep / "pc.degree=0"])
    assert [line.split()[-1] for line in text.splitlines()[1:]] == ["pc.degree=0", "pc.degree=4"]
