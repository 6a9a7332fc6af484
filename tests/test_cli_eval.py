"""``pcpretrain eval`` end to end: a run trained through the CLI, its merged checkpoint evaluated on the
run's own validation file (the perplexity is exp of the run's last val_loss) and on a local lm-eval task."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from eval_helpers import TASK, offline, write_choice_task, write_jsonl
from helpers import TINY_OVERRIDES, read_metrics, run_cli

from pcpretrain.analysis.eval_results import EVAL_FILE, read_scores
from pcpretrain.cli import main

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)


@pytest.fixture(scope="module")
def run(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny PC run on Milton whose held-out set is a file written here; its directory and that file."""
    root = tmp_path_factory.mktemp("eval-run")
    milton = shared_dir / "data" / "milton"
    text = json.loads((milton / "validation.jsonl").read_text(encoding="utf-8").splitlines()[0])["text"]
    held = write_jsonl(
        root / "held.jsonl", [paragraph for paragraph in text[:6000].split("\n\n") if paragraph]
    )
    run_cli(
        "train",
        *TINY_OVERRIDES,
        "data=files",
        f"data.train_files=[{milton}/train-00000-of-00004.jsonl]",
        f"data.validation_files=[{held}]",
        "data.num_workers=0",
        "pc.degree=4",
        f"trainer.max_steps={STEPS}",
        "trainer.eval_batches=null",
        f"run.dir={root / 'run'}",
    )
    return root / "run", held


def test_eval_reproduces_the_runs_validation_loss_and_scores_a_local_task(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, held = run
    merged = run_dir / "checkpoints" / f"step_{STEPS:08d}-merged"
    tasks = tmp_path / "tasks"
    write_choice_task(tasks, tmp_path)
    result = run_cli(
        "eval", str(merged), "--heldout", str(held), "--tasks", TASK, "--include-path", str(tasks)
    )
    assert "ppl/held.jsonl/perplexity" in result.stdout and f"{TASK}/acc" in result.stdout

    val_loss = read_metrics(run_dir)[-1]["val_loss"]
    document = json.loads((merged / EVAL_FILE).read_text())
    scores = document["scores"]
    assert scores["ppl/held.jsonl/perplexity"] == pytest.approx(math.exp(val_loss), rel=1e-4)
    assert scores["ppl/held.jsonl/loss"] == pytest.approx(val_loss, rel=1e-5)
    assert 0.0 <= scores[f"{TASK}/acc"] <= 1.0
    assert document["step"] == STEPS and document["model_dir"] == str(merged.resolve())
    assert document["details"]["ppl/held.jsonl"]["tokens"] % 64 == 0
    assert document["details"]["lm_eval"]["results"][TASK]["acc,none"] == scores[f"{TASK}/acc"]
    assert document["settings"]["ppl/held.jsonl"]["seq_len"] == 64
    assert document["settings"][TASK]["num_fewshot"] == 0

    # A second call adds its scores to the file's and replaces only what it measured again.
    assert main(["eval", str(merged), "--heldout", str(held), "--max-batches", "1", "--batch-size", "2"]) == 0
    again = read_scores(merged)
    assert again[f"{TASK}/acc"] == scores[f"{TASK}/acc"]
    assert again["ppl/held.jsonl/loss"] != scores["ppl/held.jsonl/loss"]
    assert json.loads((merged / EVAL_FILE).read_text())["details"]["ppl/held.jsonl"]["tokens"] == 2 * 64


def test_bad_arguments_exit_2_and_a_missing_lm_eval_exits_1(
    run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, held = run
    merged = run_dir / "checkpoints" / f"step_{STEPS:08d}-merged"
    unmerged = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert main(["eval", str(unmerged), "--heldout", str(held)]) == 2
    assert "pcpretrain export" in capsys.readouterr().err
    assert main(["eval", str(merged), "--heldout", str(run_dir / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(merged)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)
    assert main(["eval", str(merged), "--tasks", "hellaswag"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'pcpretrain eval: lm-eval is not installed; install the extra: pip install -e ".[eval]"'
