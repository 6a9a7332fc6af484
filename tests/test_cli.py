"""The CLI end to end, as a user runs it: train, stop, resume, export, sweep, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_OVERRIDES, read_metrics, run_cli
from safetensors.torch import load_file

from pcpretrain import pc
from pcpretrain.config import load_yaml
from pcpretrain.model import build_model

pytestmark = pytest.mark.slow

STEPS = ["trainer.max_steps=8", "checkpoint.every=4"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps in one go, checkpoints every 4, merged model at the end."""
    run_dir = tmp_path_factory.mktemp("cli") / "straight"
    run_cli("train", *TINY_OVERRIDES, *STEPS, f"run.dir={run_dir}")
    return run_dir


def test_stop_at_then_resume_gives_identical_losses_step_for_step(straight: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    first = run_cli("train", *TINY_OVERRIDES, *STEPS, "trainer.stop_at=4", f"run.dir={run_dir}")
    assert "steps           4/8" in first.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000004"]
    run_cli("train", *TINY_OVERRIDES, *STEPS, f"run.dir={run_dir}")
    resumed = read_metrics(run_dir)
    reference = read_metrics(straight)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    assert [r.get("val_loss") for r in resumed] == [r.get("val_loss") for r in reference]


def test_metrics_records_carry_the_documented_fields(straight: Path) -> None:
    records = read_metrics(straight)
    for record in records:
        assert {
            "step",
            "loss",
            "lr",
            "tokens",
            "tokens_per_s",
            "grad_norm",
            "pc/gamma_mean",
            "pc/sigma_mean",
        } <= set(record)
    assert records[-1]["tokens"] == 8 * 8 * 64
    # One lr per parameter category; `lr` is the hidden matrices' (param_groups[0] is pc_gamma's).
    assert {"lr/hidden_matrix", "lr/pc_gamma", "lr/embedding", "lr/lm_head", "lr/vector"} <= set(records[-1])
    assert all(r["lr"] == r["lr/hidden_matrix"] for r in records)
    assert "val_loss" in records[-1]
    assert (straight / "config.yaml").is_file() and load_yaml(straight / "config.yaml").pc.degree == 4


def test_merged_model_loads_without_pcpretrain_and_matches_the_training_model(
    straight: Path, tmp_path: Path
) -> None:
    merged = straight / "checkpoints" / "step_00000008-merged"
    unmerged = straight / "checkpoints" / "step_00000008"
    input_ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    torch.save(input_ids, tmp_path / "input_ids.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(merged)!r}).eval()\n"
        f"AutoTokenizer.from_pretrained({str(merged)!r})\n"
        f"ids = torch.load({str(tmp_path / 'input_ids.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(input_ids=ids).logits, {str(tmp_path / 'logits.pt')!r})\n"
        "assert not any(name.startswith('pcpretrain') for name in sys.modules), 'pcpretrain was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    hf_logits = torch.load(tmp_path / "logits.pt")

    cfg = load_yaml(unmerged / "config.yaml")
    model = build_model(cfg.model, 512)
    pc.apply_pc(model, cfg.pc.degree, cfg.pc.targets)
    model.load_state_dict(load_file(str(unmerged / "model.safetensors")), strict=True)
    with torch.no_grad():
        training_logits = model.eval()(input_ids=input_ids).logits
    torch.testing.assert_close(hf_logits, training_logits, atol=1e-5, rtol=0)


def test_export_writes_the_merged_form_of_any_unmerged_checkpoint(straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    run_cli("export", str(straight / "checkpoints" / "step_00000008"), str(out))
    exported = load_file(str(out / "model.safetensors"))
    trained = load_file(str(straight / "checkpoints" / "step_00000008-merged" / "model.safetensors"))
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in exported)
    assert {"config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    refused = run_cli("export", str(straight / "checkpoints" / "step_00000008"), str(out), expect_ok=False)
    assert refused.returncode != 0 and "not empty" in refused.stderr


def test_export_of_a_missing_or_damaged_checkpoint_is_a_clear_error(straight: Path, tmp_path: Path) -> None:
    missing = run_cli("export", str(tmp_path / "nope"), str(tmp_path / "out"), expect_ok=False)
    assert missing.returncode == 1 and "no such checkpoint directory" in missing.stderr
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(straight / "checkpoints" / "step_00000004"), str(damaged)], check=True)
    (damaged / "model.safetensors").write_bytes(b"\0" * 10)
    result = run_cli("export", str(damaged), str(tmp_path / "out"), expect_ok=False)
    assert result.returncode == 1 and "damaged checkpoint, model.safetensors" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_stepz=3", "trainer.max_stepz"),
        ("pc.degree=7", "pc.degree=7 is not allowed; choose one of 0, 1, 2, 3, 4"),
        ("optimizer=sgd", "Available options in 'optimizer'"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path: Path, override: str, message: str) -> None:
    result = run_cli("train", *TINY_OVERRIDES, override, f"run.dir={tmp_path / 'run'}", expect_ok=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_sweep_runs_one_directory_per_point(tmp_path: Path) -> None:
    run_cli("train", "-m", "pc.degree=0,4", *TINY_OVERRIDES, "trainer.max_steps=2", f"run.dir={tmp_path}")
    for degree in (0, 4):
        point = tmp_path / f"pc.degree={degree}"
        assert load_yaml(point / "config.yaml").pc.degree == degree
        assert [r["step"] for r in read_metrics(point)] == [1, 2]
    assert "pc/gamma_mean" not in read_metrics(tmp_path / "pc.degree=0")[-1]


def test_training_on_the_embedded_corpus_lowers_the_validation_loss(tmp_path: Path) -> None:
    result = run_cli(
        "train", *TINY_OVERRIDES, "trainer.max_steps=40", "trainer.eval_every=10", f"run.dir={tmp_path}"
    )
    val = [r["val_loss"] for r in read_metrics(tmp_path) if "val_loss" in r]
    assert len(val) == 4
    assert val[-1] < val[0] - 0.3, val
    # No library noise a user cannot act on: DeepSpeed guessing the device, transformers deprecations.
    assert "Setting accelerator to CPU" not in result.stderr + result.stdout
    assert "deprecated" not in result.stderr + result.stdout


def test_files_source_with_the_llama2_tokenizer(shared_dir: Path, tmp_path: Path) -> None:
    milton = shared_dir / "data" / "milton"
    result = run_cli(
        "train",
        *TINY_OVERRIDES,
        "data=files",
        f"data.train_files=[{milton}/train-*.jsonl]",
        f"data.validation_files=[{milton}/validation.jsonl]",
        f"data.tokenizer.path={shared_dir / 'tokenizers' / 'llama2' / 'tokenizer.model'}",
        "data.tokenizer.vocab_size=null",  # TINY_OVERRIDES sizes a trained one
        "model.vocab_size=32000",
        "trainer.max_steps=2",
        f"run.dir={tmp_path}",
    )
    assert "val loss" in result.stdout
    merged = tmp_path / "checkpoints" / "step_00000002-merged"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(merged)("Hello world", add_special_tokens=False)["input_ids"] == [
        15043,
        3186,
    ]


def test_usage_and_unknown_command() -> None:
    assert "commands:" in run_cli().stdout
    unknown = run_cli("trian", expect_ok=False)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


def test_optimizer_by_degree_sweep_then_compare(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_cli(
        "train",
        "-m",
        "optimizer=adamw,muon",
        "pc.degree=0,2",
        *TINY_OVERRIDES,
        "trainer.max_steps=2",
        f"run.dir={sweep}",
    )
    points = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert points == [f"optimizer={o},pc.degree={d}" for o in ("adamw", "muon") for d in (0, 2)]
    result = run_cli("compare", str(sweep), "--png", str(tmp_path / "curves.png"))
    table_lines = [line for line in result.stdout.splitlines() if line.startswith(("adamw", "muon"))]
    assert len(table_lines) == 4
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    groups = json.loads((sweep / "optimizer=muon,pc.degree=2" / "optimizer_groups.json").read_text())
    assert [g["category"] for g in groups if g["optimizer"] == "muon"] == ["hidden_matrix"]


def test_schedule_command_prints_the_curve(tmp_path: Path) -> None:
    result = run_cli("schedule", "scheduler=wsd", "trainer.max_steps=100", "--png", str(tmp_path / "lr.png"))
    assert "step" in result.stdout and (tmp_path / "lr.png").is_file()
