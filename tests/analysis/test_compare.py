"""Comparing run directories: discovery, per-run summaries, groups of seeds, their statistics, the table,
the JSON document, the validation plot and the command line."""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import TINY_OVERRIDES, read_metrics, run_cli
from omegaconf import OmegaConf

from pcpretrain.analysis.compare import compare
from pcpretrain.analysis.compare_plot import draw_validation_curves, group_curve
from pcpretrain.analysis.comparison import build_comparison
from pcpretrain.analysis.run_files import find_runs, read_records, summarize_run
from pcpretrain.analysis.seed_groups import RESULT_NEUTRAL_KEYS, group_runs, is_result_neutral
from pcpretrain.analysis.seed_stats import SEED_STD, STDERR, Stat, difference
from pcpretrain.cli import main
from pcpretrain.config import TrainConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@functools.cache
def default_config() -> dict[str, Any]:
    """The default config as plain data, built once (a structured config takes a while to build)."""
    return OmegaConf.to_container(OmegaConf.structured(TrainConfig()))


def make_run(
    root: Path,
    name: str,
    *,
    seed: int = 0,
    degree: int = 0,
    lr: float = 1e-3,
    steps: int = 20,
    val_every: int | None = 5,
    offset: float = 0.0,
    gmcn: float | None = None,
    scores: dict[str, float] | None = None,
    **config: Any,
) -> Path:
    """A run directory as training leaves it: the full config (``config``: more dotted keys), one record
    per step whose losses are shifted by ``offset``, and optionally an eval.json in a merged checkpoint."""
    run = root / name
    run.mkdir(parents=True)
    cfg = OmegaConf.create(default_config())
    values = {"seed": seed, "pc.degree": degree, "optimizer.lr": lr, "trainer.max_steps": 40, **config}
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, run / "config.yaml")
    with (run / "metrics.jsonl").open("w", encoding="utf-8") as handle:
        for step in range(1, steps + 1):
            record = {
                "step": step,
                "loss": 10.0 - step / 10 - degree + offset,
                "lr": lr,
                "tokens": 1000 * step,
            }
            record["tokens_per_s"] = 5000.0 if step % 2 else 7000.0
            if val_every and step % val_every == 0:
                record["val_loss"] = 11.0 - step / 10 - degree + offset
            if gmcn is not None:
                record["spectral/gmcn"] = gmcn + step
            handle.write(json.dumps(record) + "\n")
    if scores is not None:
        write_eval(run, steps, scores)
    return run


def write_eval(run: Path, step: int, scores: dict[str, float]) -> Path:
    merged = run / "checkpoints" / f"step_{step:08d}-merged"
    merged.mkdir(parents=True, exist_ok=True)
    (merged / "eval.json").write_text(json.dumps({"scores": scores, "step": step}), encoding="utf-8")
    return merged / "eval.json"


# Final val losses of the seeds of two settings (offsets added to the degree-0 curve's 9.0).
BASE_OFFSETS = (0.0, 0.1, 0.5)
PC_OFFSETS = (-0.3, -0.2, 0.05)


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    """3 seeds without PC, 3 with degree 2 (each seed its own run.dir and logger settings)."""
    root = tmp_path / "sweep"
    for seed, offset in enumerate(BASE_OFFSETS, start=1):
        make_run(root, f"pc.degree=0,seed={seed}", seed=seed, offset=offset, **{"run.dir": f"x{seed}"})
    for seed, offset in enumerate(PC_OFFSETS, start=1):
        make_run(root, f"pc.degree=2,seed={seed}", seed=seed, degree=2, offset=offset + 2)
    return root


def val(offsets: tuple[float, ...]) -> list[float]:
    return [9.0 + offset for offset in offsets]


# --- discovery and one run ----------------------------------------------------------------------------


def test_find_runs_expands_a_sweep_and_keeps_single_runs(seeds: Path) -> None:
    (seeds / "notes").mkdir()
    names = [run.name for run in find_runs([seeds])]
    assert names == [f"pc.degree={d},seed={s}" for d in (0, 2) for s in (1, 2, 3)]
    one = seeds / "pc.degree=2,seed=1"
    assert find_runs([one]) == [one]
    assert len(find_runs([seeds, one])) == 6


def test_find_runs_names_a_path_without_runs(tmp_path: Path, seeds: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: no runs found"):
        find_runs([seeds, empty])
    with pytest.raises(FileNotFoundError, match="missing"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no paths"):
        find_runs([])
    (seeds / "pc.degree=0,seed=1" / "metrics.jsonl").unlink()
    with pytest.raises(ValueError, match="no runs found"):
        find_runs([seeds / "pc.degree=0,seed=1"])


def test_summary_takes_the_final_logged_values(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run", degree=4, lr=3e-4, gmcn=40.0, scores={"arc": 0.25})
    row = summarize_run(run)
    assert (row.name, row.optimizer, row.degree, row.lr, row.seed) == ("run", "adamw", 4, 3e-4, 0)
    assert (row.steps, row.max_steps, row.tokens, row.tokens_per_s) == (20, 40, 20_000, 6000.0)
    assert row.final_train_loss == pytest.approx(10.0 - 2.0 - 4)  # the last one, not a tail mean
    assert row.final_val_loss == pytest.approx(11.0 - 2.0 - 4)
    assert row.gmcn == 60.0
    assert row.eval_scores == {"arc": 0.25}
    assert row.val_curve[0] == (5000, pytest.approx(11.0 - 0.5 - 4))


def test_summary_of_a_running_run(tmp_path: Path) -> None:
    """Nothing logged yet, or a last line still being written: what is there, and no error."""
    fresh = summarize_run(make_run(tmp_path, "fresh", steps=0))
    assert (fresh.steps, fresh.final_train_loss, fresh.final_val_loss, fresh.gmcn, fresh.tokens) == (
        0,
        None,
        None,
        None,
        None,
    )
    running = make_run(tmp_path, "running", steps=3, val_every=None)
    with (running / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"step": 4, "lo')
    row = summarize_run(running)
    assert (row.steps, row.final_val_loss, row.eval_scores) == (3, None, {})
    assert row.final_train_loss == pytest.approx(10.0 - 0.3)


def test_a_half_written_last_record_is_skipped_but_a_broken_middle_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    assert read_records(path) == [{"step": 1, "loss": 2.0}]
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 2.0}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        read_records(path)


def test_eval_scores_come_from_the_newest_merged_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run", steps=8, scores={"arc": 0.2})
    write_eval(run, 4, {"arc": 0.1, "old": 1.0})
    (run / "checkpoints" / "step_00000012").mkdir()  # unmerged: not an evaluated model
    assert summarize_run(run).eval_scores == {"arc": 0.2}
    newest = run / "checkpoints" / "step_00000016-merged"
    newest.mkdir()
    assert summarize_run(run).eval_scores == {}  # not evaluated yet
    (newest / "eval.json").write_text('{"scores": {"arc": 0.3, "note": "x"}}', encoding="utf-8")
    assert summarize_run(run).eval_scores == {"arc": 0.3}
    (newest / "eval.json").write_text('{"scores": {"ar', encoding="utf-8")
    with pytest.raises(ValueError, match="step_00000016-merged/eval.json: not valid JSON"):
        summarize_run(run)


def test_a_config_without_the_compared_keys_is_named(tmp_path: Path) -> None:
    run = make_run(tmp_path, "odd")
    OmegaConf.save(OmegaConf.create({"optimizer": {"name": "adamw"}}), run / "config.yaml")
    with pytest.raises(ValueError, match="config.yaml: has no pc.degree"):
        summarize_run(run)


# --- groups -------------------------------------------------------------------------------------------


def test_runs_differing_only_in_result_neutral_keys_form_one_group(tmp_path: Path) -> None:
    neutral = {
        "run.dir": "elsewhere",
        "resume": "never",
        "logger.progress": False,
        "checkpoint.every": 7,
        "trainer.stop_at": 3,
        "trainer.log_every": 5,
        "trainer.profile": "2-3",
        "distributed.timeout_s": 60,
        "spectral.every": 100,
    }
    runs = [make_run(tmp_path, "a", seed=1), make_run(tmp_path, "b", seed=2, **neutral)]
    runs.append(make_run(tmp_path, "c", seed=3, **{"trainer.max_steps": 80}))
    runs.append(make_run(tmp_path, "d", seed=4, **{"trainer.max_steps": 80, "data.num_workers": 2}))
    groups = group_runs([summarize_run(run) for run in runs])
    assert [[run.name for run in group.runs] for group in groups] == [["a", "b"], ["c"], ["d"]]
    assert [group.label for group in groups] == [
        "data.num_workers=0 trainer.max_steps=40",
        "data.num_workers=0 trainer.max_steps=80",
        "data.num_workers=2 trainer.max_steps=80",
    ]
    assert all(is_result_neutral(key) for key in neutral)
    assert "seed" in RESULT_NEUTRAL_KEYS and not is_result_neutral("trainer.profiles")


def test_labels_name_the_differing_keys_optimizer_and_degree_first(tmp_path: Path) -> None:
    make_run(tmp_path, "a", degree=0, **{"optimizer.name": "adamw"})
    make_run(tmp_path, "b", degree=2, **{"optimizer.name": "muon"})
    make_run(tmp_path, "c", degree=2, seed=5, **{"optimizer.name": "muon"})
    groups = build_comparison([tmp_path]).groups
    assert [(g.label, g.n) for g in groups] == [
        ("optimizer.name=adamw pc.degree=0", 1),
        ("optimizer.name=muon pc.degree=2", 2),
    ]
    assert [run.seed for run in groups[1].runs] == [0, 5]
    assert groups[1].settings == {"optimizer.name": "muon", "pc.degree": 2, "optimizer.lr": 1e-3}


def test_a_single_group_is_labelled_by_optimizer_and_degree(tmp_path: Path) -> None:
    for seed in (1, 2):
        make_run(tmp_path, f"s{seed}", seed=seed, degree=4)
    (group,) = build_comparison([tmp_path]).groups
    assert (group.label, group.n) == ("optimizer.name=adamw pc.degree=4", 2)


def test_group_statistics_are_sample_mean_and_std(seeds: Path) -> None:
    base, pc = build_comparison([seeds]).groups
    assert (base.label, pc.label) == ("pc.degree=0", "pc.degree=2")
    val_loss = base.stat("val_loss")
    assert val_loss.values == pytest.approx(tuple(val(BASE_OFFSETS)))
    assert val_loss.mean == pytest.approx(statistics.mean(val(BASE_OFFSETS)))
    assert val_loss.std == pytest.approx(statistics.stdev(val(BASE_OFFSETS)))
    assert pc.stat("train_loss").mean == pytest.approx(statistics.mean(8.0 + o for o in PC_OFFSETS))
    assert Stat.of([2.0]).std is None and Stat.of([None, None]).mean is None
    assert Stat.of([1.0, None, 3.0]).as_dict() == {
        "n": 2,
        "mean": 2.0,
        "std": math.sqrt(2),
        "values": [1, None, 3],
    }


def test_difference_spread_is_the_standard_error_else_the_seed_std() -> None:
    one, three, other = Stat.of([4.0]), Stat.of([1.0, 2.0, 4.0]), Stat.of([0.0, 1.0])
    both = difference(three, other)
    assert both.value == pytest.approx(statistics.mean([1, 2, 4]) - 0.5)
    se = math.sqrt(statistics.variance([1, 2, 4]) / 3 + statistics.variance([0, 1]) / 2)
    assert (both.spread, both.spread_kind) == (pytest.approx(se), STDERR)
    single = difference(one, three)
    assert (single.spread, single.spread_kind) == (pytest.approx(statistics.stdev([1, 2, 4])), SEED_STD)
    assert difference(three, one).spread == pytest.approx(statistics.stdev([1, 2, 4]))
    assert (difference(one, one).spread, difference(one, one).spread_kind) == (None, None)
    assert difference(Stat.of([None]), three) is None


# --- baseline -----------------------------------------------------------------------------------------


def test_default_baseline_is_the_one_group_without_pc(seeds: Path, tmp_path: Path) -> None:
    comparison = build_comparison([seeds])
    base, pc = comparison.groups
    assert comparison.baseline is base
    d = comparison.difference(pc, "val_loss")
    assert d.value == pytest.approx(statistics.mean(val(PC_OFFSETS)) - statistics.mean(val(BASE_OFFSETS)))
    se = math.sqrt(statistics.variance(val(PC_OFFSETS)) / 3 + statistics.variance(val(BASE_OFFSETS)) / 3)
    assert (d.spread, d.spread_kind) == (pytest.approx(se), STDERR)
    assert comparison.difference(base, "val_loss") is None
    assert build_comparison([seeds / "pc.degree=0,seed=1"]).baseline is None  # one group: nothing to compare
    make_run(tmp_path / "two", "lr1", lr=1e-3)
    make_run(tmp_path / "two", "lr2", lr=2e-3)
    assert build_comparison([tmp_path / "two"]).baseline is None  # two groups without PC: which one?


def test_baseline_selected_by_config_values(seeds: Path, tmp_path: Path) -> None:
    assert build_comparison([seeds], "pc.degree=2").baseline.label == "pc.degree=2"
    make_run(seeds, "lr", seed=9, lr=3e-3)
    comparison = build_comparison([seeds], "optimizer.lr=3e-3,pc.degree=0")
    assert comparison.baseline.label == "pc.degree=0 optimizer.lr=0.003"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pc.degree=5", "no group has pc.degree=5; the groups are:\n  pc.degree=0\n  pc.degree=2"),
        ("optimizer.name=adamw", "2 groups have optimizer.name=adamw"),
        ("seed=1", "seed: this key does not tell groups apart"),
        ("pc.degre=0", "pc.degre: no run's config has this key"),
        ("pc.degree", "expected KEY=VALUE"),
    ],
)
def test_baseline_errors_list_the_groups(seeds: Path, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_comparison([seeds], spec)


# --- output -------------------------------------------------------------------------------------------


def table(text: str, index: int = 0) -> list[dict[str, str]]:
    """The ``index``-th table of ``text``, one ``{column: cell}`` per row (cells are 2+ spaces apart)."""
    header, *rows = text.split("\n\n")[index].splitlines()
    columns = re.split(r"\s{2,}", header)
    return [dict(zip(columns, re.split(r"\s{2,}", row.strip()), strict=True)) for row in rows]


def test_table_has_one_row_per_group_with_spreads_and_differences(seeds: Path) -> None:
    text = compare([seeds])
    base, pc = table(text)
    assert list(base) == [
        "optimizer",
        "degree",
        "lr",
        "n",
        "steps",
        "train loss",
        "val loss",
        "Δ val loss",
        "tokens",
        "tokens/s",
        "runs",
    ]  # no GMCN column: no run has a spectral monitor
    assert [base[c] for c in ("optimizer", "degree", "lr", "n", "steps")] == [
        "adamw",
        "0",
        "0.001",
        "3",
        "20/40",
    ]
    assert (
        base["val loss"]
        == f"{statistics.mean(val(BASE_OFFSETS)):.4f} ± {statistics.stdev(val(BASE_OFFSETS)):.4f}"
    )
    assert base["train loss"] == f"{statistics.mean(8.0 + o for o in BASE_OFFSETS):.4f}"
    assert (base["Δ val loss"], base["runs"]) == ("baseline", "pc.degree=0 seed=1,2,3")
    comparison = build_comparison([seeds])
    d = comparison.difference(comparison.groups[1], "val_loss")
    assert pc["Δ val loss"] == f"{d.value:+.4f} ± {d.spread:.4f}"
    assert (pc["tokens"], pc["tokens/s"], pc["runs"]) == ("20k", "6k", "pc.degree=2 seed=1,2,3")
    lines = text.splitlines()
    assert lines[1].index("±") == lines[2].index("±")
    assert "Δ = group mean - baseline mean (pc.degree=0)" in text


def test_single_runs_show_a_dash_for_the_std_and_their_names(tmp_path: Path) -> None:
    make_run(tmp_path, "plain", degree=0, lr=1e-3)
    make_run(tmp_path, "pc", degree=4, lr=1e-2, steps=7, val_every=None)
    plain, pc = table(compare([tmp_path]))
    assert (plain["runs"], plain["val loss"], plain["Δ val loss"]) == ("plain", f"{9.0:.4f} ± -", "baseline")
    assert (pc["runs"], pc["steps"], pc["val loss"], pc["Δ val loss"]) == ("pc", "7/40", "-", "-")


def test_gmcn_and_one_eval_score_are_columns_more_go_below(tmp_path: Path) -> None:
    for seed in (1, 2):
        make_run(tmp_path, f"base{seed}", seed=seed, gmcn=50.0 + seed, scores={"arc": 0.2 + seed / 100})
        make_run(tmp_path, f"pc{seed}", seed=seed, degree=2, gmcn=30.0 + seed, scores={"arc": 0.3})
    base, pc = table(compare([tmp_path]))
    assert (base["GMCN"], pc["Δ GMCN"]) == ("71.5 ± 0.7071", "-20 ± 0.7071")
    assert (base["arc"], pc["arc"], pc["Δ arc"]) == ("0.2150 ± 0.0071", "0.3000 ± 0.0000", "+0.0850 ± 0.0050")
    make_run(tmp_path, "pc3", seed=3, degree=2, scores={"arc": 0.3, "mmlu": 0.4, "piqa": 0.6})
    text = compare([tmp_path])
    base, pc = table(text)
    assert "arc" not in base and pc["GMCN"] == "51.5 ± 0.7071"  # pc3 has logged no GMCN
    scores = table(text, 1)
    assert list(scores[0]) == ["eval score", "group", "n", "mean ± std", "Δ ± spread"]
    assert [(row["eval score"], row["group"], row["n"]) for row in scores] == [
        (score, group, n)
        for score, counts in (("arc", (2, 3)), ("mmlu", (0, 1)), ("piqa", (0, 1)))
        for group, n in zip(("pc.degree=0", "pc.degree=2"), map(str, counts), strict=True)
    ]
    assert scores[1]["Δ ± spread"].startswith("+0.0850 ± ")
    assert (scores[2]["mean ± std"], scores[2]["Δ ± spread"]) == ("-", "baseline")
    assert (scores[5]["mean ± std"], scores[5]["Δ ± spread"]) == ("0.6000 ± -", "-")


def test_json_document(seeds: Path) -> None:
    write_eval(seeds / "pc.degree=2,seed=1", 20, {"arc": 0.5})
    document = json.loads(compare([seeds], as_json=True))
    assert document["baseline"] == "pc.degree=0" and document["plot"] is None
    assert document["grouping_ignores"] == list(RESULT_NEUTRAL_KEYS)
    base, pc = document["groups"]
    assert (base["label"], base["n"], base["is_baseline"], base["differences"]) == (
        "pc.degree=0",
        3,
        True,
        None,
    )
    assert pc["settings"] == {"optimizer.name": "adamw", "pc.degree": 2, "optimizer.lr": 0.001}
    assert [run["seed"] for run in pc["runs"]] == [1, 2, 3]
    assert pc["runs"][0]["name"] == "pc.degree=2,seed=1" and pc["runs"][0]["steps"] == 20
    assert set(pc["metrics"]) == {"val_loss", "train_loss", "gmcn", "tokens_per_s", "eval/arc"}
    assert pc["metrics"]["val_loss"]["values"] == pytest.approx(val(PC_OFFSETS))
    assert pc["metrics"]["val_loss"]["std"] == pytest.approx(statistics.stdev(val(PC_OFFSETS)))
    assert pc["metrics"]["eval/arc"] == {"n": 1, "mean": 0.5, "std": None, "values": [0.5, None, None]}
    assert pc["metrics"]["gmcn"]["n"] == 0
    found = pc["differences"]["val_loss"]
    assert found["value"] == pytest.approx(
        statistics.mean(val(PC_OFFSETS)) - statistics.mean(val(BASE_OFFSETS))
    )
    assert found["spread_kind"] == "stderr"
    assert pc["differences"]["gmcn"] is None and pc["differences"]["eval/arc"] is None


# --- plot ---------------------------------------------------------------------------------------------


def test_group_curve_is_the_mean_over_evaluations_all_seeds_have(seeds: Path) -> None:
    make_run(seeds, "pc.degree=2,seed=4", seed=4, degree=2, steps=10, offset=2.0)  # still running
    _, pc = build_comparison([seeds]).groups
    tokens, mean, low, high = group_curve(pc)
    assert tokens == [5000, 10000]
    at_10k = [11.0 - 1.0 - 2 + offset + 2 for offset in (*PC_OFFSETS, 0.0)]
    assert mean[1] == pytest.approx(statistics.mean(at_10k))
    assert (low[1], high[1]) == (pytest.approx(min(at_10k)), pytest.approx(max(at_10k)))


def test_plot_draws_groups_and_names_those_without_validation(tmp_path: Path, seeds: Path) -> None:
    pytest.importorskip("matplotlib")
    make_run(tmp_path / "more", "single", degree=4, lr=3e-3)
    make_run(tmp_path / "more", "noval", degree=1, val_every=None)
    groups = build_comparison([seeds, tmp_path / "more"]).groups
    out = tmp_path / "out" / "val.png"
    assert draw_validation_curves(groups, out) == ["noval"]
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 5_000
    without = [group for group in groups if group.name == "noval"]
    assert draw_validation_curves(without, tmp_path / "none.png") == ["noval"]
    assert (tmp_path / "none.png").read_bytes().startswith(PNG_MAGIC)


def test_compare_returns_the_table_and_writes_the_plot(seeds: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    make_run(seeds, "pc.degree=4", degree=4, steps=3, val_every=None)
    out = tmp_path / "val.png"
    text = compare([seeds], out)
    assert text.splitlines()[0].startswith("optimizer")
    assert f"validation curves: {out}" in text
    assert text.splitlines()[-1] == "no val_loss logged yet, so not in the plot: pc.degree=4"
    assert out.read_bytes().startswith(PNG_MAGIC)
    document = json.loads(compare([seeds], out, as_json=True))
    assert (document["plot"], document["not_plotted"]) == (str(out), ["pc.degree=4"])


# --- command line -------------------------------------------------------------------------------------


def test_cli_options(seeds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    assert main(["compare", str(seeds), "--no-plot", "--json", "--baseline", "pc.degree=2"]) == 0
    assert json.loads(capsys.readouterr().out)["baseline"] == "pc.degree=2"
    assert not (seeds / "validation_curves.png").exists()
    assert main(["compare", str(seeds)]) == 0
    assert "validation curves:" in capsys.readouterr().out
    assert (seeds / "validation_curves.png").read_bytes().startswith(PNG_MAGIC)
    assert main(["compare", str(seeds), "--no-plot", "--baseline", "pc.degree=9"]) == 1
    assert "no group has pc.degree=9" in capsys.readouterr().err


def test_compare_imports_no_torch(seeds: Path) -> None:
    """It runs beside training on copies of the outputs, where loading torch would cost seconds and memory."""
    code = (
        "import sys; from pcpretrain.cli import main; "
        f"code = main(['compare', {str(seeds)!r}, '--no-plot', '--json']); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["groups"]) == 2


# --- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_seed_by_degree_sweep_then_compare(tmp_path: Path) -> None:
    """A 3-seed x 2-degree sweep through the CLI in one process, then compare: 2 rows of 3 seeds."""
    sweep = tmp_path / "sweep"
    run_cli(
        "train",
        "-m",
        "seed=1,2,3",
        "pc.degree=0,2",
        *TINY_OVERRIDES,
        "trainer.max_steps=3",
        "trainer.batch_size=4",
        "trainer.eval_batches=1",
        "data.shuffle_buffer=16",  # filling the default buffer would take longer than the training
        "checkpoint.final_forms=[merged]",
        f"run.dir={sweep}",
    )
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == [f"pc.degree={d},seed={s}" for d in (0, 2) for s in (1, 2, 3)]
    for run in runs:  # what an evaluation harness leaves beside the final merged model
        write_eval(sweep / run, 3, {"arc": 0.25 + int(run[-1]) / 100})
    text = run_cli("compare", str(sweep)).stdout
    rows = table(text)
    assert len(rows) == 2 and "Δ val loss" in rows[0] and "Δ arc" in rows[0]
    assert (sweep / "validation_curves.png").read_bytes().startswith(PNG_MAGIC)
    document = json.loads(run_cli("compare", str(sweep), "--json", "--no-plot").stdout)
    assert document["baseline"] == "pc.degree=0"
    for row, group, degree in zip(rows, document["groups"], (0, 2), strict=True):
        assert group["label"] == f"pc.degree={degree}" and group["n"] == 3
        assert [row[c] for c in ("optimizer", "degree", "lr", "n", "steps")] == [
            "adamw",
            str(degree),
            "0.003",
            "3",
            "3/3",
        ]
        val_losses = [read_metrics(sweep / run["name"])[-1]["val_loss"] for run in group["runs"]]
        stats = group["metrics"]["val_loss"]
        assert stats["values"] == val_losses
        assert stats["std"] == pytest.approx(statistics.stdev(val_losses)) and stats["std"] > 0
        assert row["val loss"] == f"{statistics.mean(val_losses):.4f} ± {statistics.stdev(val_losses):.4f}"
        assert group["metrics"]["eval/arc"]["mean"] == pytest.approx(0.27)
    pc = document["groups"][1]["differences"]["val_loss"]
    assert (
        rows[1]["Δ val loss"] == f"{pc['value']:+.4f} ± {pc['spread']:.4f}" and pc["spread_kind"] == "stderr"
    )
