"""``pcpretrain spectra``: checkpoints of every form give the same spectra, equal to an independent float64
computation of the PC transform; discovery of runs, outputs and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY_OVERRIDES, run_cli
from safetensors.torch import load_file, save_file

from pcpretrain import checkpoint as ckpt
from pcpretrain import cli, pc
from pcpretrain.analysis.checkpoint_sources import MERGED, UNMERGED, find_checkpoints
from pcpretrain.analysis.spectra_plots import GMCN_PNG, HISTOGRAM_PNG, MCN_PNG
from pcpretrain.analysis.spectra_report import RECORDS_FILE, analyse, read_records, spectra_report
from pcpretrain.checkpoint_weights import layer_groups
from pcpretrain.choices import DEFAULT_PC_TARGETS
from pcpretrain.config import ModelConfig, TrainConfig, to_yaml
from pcpretrain.data.tokenizer import load_tokenizer
from pcpretrain.export import MERGED_INFO, export_checkpoint, run_info, write_merged_groups
from pcpretrain.model import build_model
from pcpretrain.spectra.analysis import SpectraReport
from pcpretrain.spectra.measures import mcn

MODEL = ModelConfig(hidden_size=32, intermediate_size=80, num_layers=3, num_heads=4, max_seq_len=64)
DEGREE = 4
STEP = 3
PNGS = {HISTOGRAM_PNG, MCN_PNG, GMCN_PNG}


def expected_pc_values(weights: dict[str, torch.Tensor], module: str, degree: int) -> tuple[float, float]:
    """sigma_1 and MCN of the transform without gamma in float64, from the raw weight, u and v alone."""
    weight, u, v = (weights[f"{module}.{leaf}"].double() for leaf in ("weight", "pc_u", "pc_v"))
    sigma = u @ weight @ v + 1e-7
    values = torch.linalg.svdvals(pc.precondition(weight, degree, sigma))
    return float(values[0]), float(mcn(values))


def assert_same_spectra(one: SpectraReport, two: SpectraReport, rtol: float = 1e-4) -> None:
    """The same matrices with the same grouping, sigma_1 and MCN; GMCN of every group alike."""
    assert [(m.name, m.pc) for m in one.matrices] == [(m.name, m.pc) for m in two.matrices]
    for a, b in zip(one.matrices, two.matrices, strict=True):
        assert b.sigma_1 == pytest.approx(a.sigma_1, rel=rtol), a.name
        assert b.mcn == pytest.approx(a.mcn, rel=rtol), a.name
    for group in (None, True, False):
        assert two.gmcn(group) == pytest.approx(one.gmcn(group), rel=rtol)


def assert_matches_independent_computation(report: SpectraReport, weights: dict[str, torch.Tensor]) -> None:
    pc_matrices = [m for m in report.matrices if m.pc]
    assert {m.kind for m in pc_matrices} == {"o_proj", "gate_proj", "up_proj", "down_proj"}
    for matrix in pc_matrices:
        sigma_1, expected_mcn = expected_pc_values(weights, matrix.name.removesuffix(".weight"), DEGREE)
        assert matrix.sigma_1 == pytest.approx(sigma_1, rel=1e-5)
        assert matrix.mcn == pytest.approx(expected_mcn, rel=1e-5)
        assert matrix.estimate_rel_error is not None and matrix.estimate_rel_error < 0.1
    for matrix in (m for m in report.matrices if not m.pc):
        values = torch.linalg.svdvals(weights[matrix.name].double())
        assert matrix.sigma_1 == pytest.approx(float(values[0]), rel=1e-5)
        assert matrix.estimate_rel_error is None


@pytest.fixture(scope="module")
def model_dirs(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PC model (gammas away from 1, one negative) written as an unmerged checkpoint, its merged form
    in one file and in indexed shards, and a plain Llama (the merged form without ``pcpretrain.json``)."""
    root = tmp_path_factory.mktemp("spectra")
    tokenizer = load_tokenizer(shared_dir / "tokenizers" / "llama2" / "tokenizer.model")
    torch.manual_seed(0)
    model = build_model(MODEL, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    pc.apply_pc(model, DEGREE, DEFAULT_PC_TARGETS, power_iters=10, seed=0)
    with torch.no_grad():
        for index, (_, module) in enumerate(pc.pc_modules(model)):
            module.pc_gamma.fill_(-0.6 if index == 0 else 0.5 + 0.1 * index)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    cfg = TrainConfig()
    cfg.model, cfg.pc.degree, cfg.run.dir = MODEL, DEGREE, str(root / "run")

    unmerged = root / "run" / "checkpoints" / f"step_{STEP:08d}"
    unmerged.mkdir(parents=True)
    save_file(state, str(unmerged / "model.safetensors"))
    (unmerged / ckpt.CONFIG).write_text(to_yaml(cfg), encoding="utf-8")
    (unmerged / ckpt.TRAINER_STATE).write_text(json.dumps({"step": STEP}), encoding="utf-8")
    ckpt.write_manifest(unmerged, with_checksums=True)

    def merged(out: Path, max_shard_bytes: int) -> Path:
        groups = ({name: state[name] for name in names} for names in layer_groups(list(state)))
        return write_merged_groups(
            groups,
            model_cfg=MODEL,
            pc_degree=DEGREE,
            tokenizer=tokenizer,
            out_dir=out,
            max_shard_bytes=max_shard_bytes,
            info=run_info(cfg, STEP),
        )

    plain = shutil.copytree(merged(root / "merged", 2**30), root / "plain")
    (plain / MERGED_INFO).unlink()
    return {
        UNMERGED: unmerged,
        MERGED: root / "merged",
        "sharded": merged(root / "sharded", 1),
        "plain": plain,
        "run": root / "run",
    }


def reports(*paths: Path) -> list[SpectraReport]:
    return [analyse(checkpoint) for checkpoint in find_checkpoints(list(paths))]


def test_unmerged_and_merged_forms_give_the_same_spectra(model_dirs: dict[str, Path]) -> None:
    unmerged, merged, sharded = reports(model_dirs[UNMERGED], model_dirs[MERGED], model_dirs["sharded"])
    assert (unmerged.step, merged.step, sharded.step) == (STEP, STEP, STEP)
    assert [r.extra["form"] for r in (unmerged, merged, sharded)] == [UNMERGED, MERGED, MERGED]
    assert [r.extra["run"] for r in (unmerged, merged, sharded)] == ["run", "merged", "sharded"]
    assert len(unmerged.matrices) == 7 * MODEL.num_layers
    assert_same_spectra(unmerged, merged)
    assert_same_spectra(merged, sharded, rtol=0)
    assert all(m.estimate_rel_error is None for m in merged.matrices)


def test_spectra_equal_a_float64_computation_from_the_raw_weights(model_dirs: dict[str, Path]) -> None:
    (report,) = reports(model_dirs[UNMERGED])
    assert_matches_independent_computation(report, load_file(str(model_dirs[UNMERGED] / "model.safetensors")))


def test_a_llama_without_pcpretrain_json_is_all_no_pc(model_dirs: dict[str, Path]) -> None:
    (plain,) = reports(model_dirs["plain"])
    assert plain.step is None
    assert not any(m.pc for m in plain.matrices)
    assert plain.gmcn(pc=True) is None


def test_a_run_prefers_the_unmerged_form_and_falls_back_to_the_merged_one(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    run = shutil.copytree(model_dirs["run"], tmp_path / "sweep" / "a")
    shutil.copytree(model_dirs[MERGED], run / "checkpoints" / f"step_{STEP:08d}-merged")
    shutil.copytree(model_dirs[MERGED], run / "checkpoints" / "step_00000009-merged")
    found = find_checkpoints([run, run / "checkpoints" / f"step_{STEP:08d}"])
    assert [(c.path.name, c.form, c.run) for c in found] == [
        (f"step_{STEP:08d}", UNMERGED, "a"),
        ("step_00000009-merged", MERGED, "a"),
    ]
    for name in ("config.yaml", "metrics.jsonl"):  # what makes a run directory one of a sweep
        (run / name).write_text("", encoding="utf-8")
    assert find_checkpoints([tmp_path / "sweep"]) == found


def test_records_and_figures_are_written(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    text = spectra_report([model_dirs[UNMERGED], model_dirs["plain"]], tmp_path / "out")
    assert "GMCN no_pc" in text.splitlines()[0]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {RECORDS_FILE, *PNGS}
    records = read_records(tmp_path / "out" / RECORDS_FILE)
    assert [r.extra for r in records] == [{"run": "run", "form": UNMERGED}, {"run": "plain", "form": MERGED}]
    assert_same_spectra(records[0], reports(model_dirs[UNMERGED])[0], rtol=0)


def test_a_path_without_checkpoints_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        assert cli.main(["spectra", str(path), "--no-plots"]) == 1
        error = capsys.readouterr().err
        assert error.startswith(f"pcpretrain spectra: {path}: no") and error.count("\n") == 1
    assert not (tmp_path / "empty" / "spectra").exists()


@pytest.mark.slow
def test_a_trained_run_end_to_end(tmp_path: Path) -> None:
    """Checkpoints at steps 2 and 4 of a tiny run (its spectral monitor at the same steps); the last also
    merged, and exported again."""
    run = tmp_path / "run"
    steps = ["trainer.max_steps=4", "checkpoint.every=2", "spectral.every=2"]
    run_cli("train", *TINY_OVERRIDES, *steps, f"run.dir={run}")
    last = run / "checkpoints" / "step_00000004"
    exported = export_checkpoint(last, tmp_path / "exported")
    result = run_cli("spectra", str(run), str(exported), "--out", str(tmp_path / "out"))
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["run", "step", "form"] and "GMCN no_pc" in header
    assert [row.split()[:3] for row in rows[:3]] == [
        ["run", "2", UNMERGED],
        ["run", "4", UNMERGED],
        ["exported", "4", MERGED],
    ]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {RECORDS_FILE, *PNGS}
    records = read_records(tmp_path / "out" / RECORDS_FILE)
    assert [(r.step, r.extra["form"], r.extra["run"]) for r in records] == [
        (2, UNMERGED, "run"),
        (4, UNMERGED, "run"),
        (4, MERGED, "exported"),
    ]
    assert records[0].gmcn() != records[1].gmcn()
    during_training = read_records(run / RECORDS_FILE)
    assert [r.step for r in during_training] == [2, 4]
    for monitored, offline in zip(during_training, records[:2], strict=True):
        assert_same_spectra(monitored, offline, rtol=1e-5)
    assert_same_spectra(records[1], records[2])
    assert_same_spectra(records[2], reports(last.with_name(f"{last.name}-merged"))[0], rtol=0)
    assert_matches_independent_computation(records[1], load_file(str(last / "model.safetensors")))
