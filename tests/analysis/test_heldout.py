"""Held-out perplexity of a merged model: the run's packing and loss, checked against a direct computation
with the PC training model (before merging) on windows cut by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import docstring_corpus, offline, packed_window_loss, tiny_merged_model, write_jsonl

from pcpretrain.analysis.eval_errors import EvalInputError
from pcpretrain.analysis.heldout import heldout_loss, open_heldout, run_windowing
from pcpretrain.analysis.merged_model import load_model
from pcpretrain.export import MERGED_INFO

SEQ_LEN = 32


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return docstring_corpus()


@pytest.fixture(scope="module")
def merged(corpus: list[str], tmp_path_factory: pytest.TempPathFactory):
    """The merged directory, the PC model it came from, and its tokenizer."""
    out = tmp_path_factory.mktemp("heldout") / "step_00000007-merged"
    model, tokenizer = tiny_merged_model(out, corpus[:300], seq_len=SEQ_LEN)
    return out, model, tokenizer


@pytest.fixture(scope="module")
def heldout_file(corpus: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [*corpus[300:310], "", *corpus[310:320]]  # an empty row counts as a row, adds no tokens
    return write_jsonl(tmp_path_factory.mktemp("data") / "held.jsonl", texts)


def test_the_loss_is_the_pc_models_token_mean_over_the_packed_windows(merged, heldout_file: Path) -> None:
    out, pc_model, tokenizer = merged
    windowing = run_windowing(out)
    assert (windowing.seq_len, windowing.add_bos, windowing.add_eos) == (SEQ_LEN, True, True)
    result = heldout_loss(
        load_model(out, "cpu", "float32"),
        tokenizer,
        open_heldout(str(heldout_file)),
        "held.jsonl",
        windowing,
        8,
    )
    texts = [json.loads(line)["text"] for line in heldout_file.read_text().splitlines()]
    expected, windows = packed_window_loss(
        pc_model, tokenizer.encode_batch(texts), SEQ_LEN, tokenizer.bos_id, tokenizer.eos_id
    )
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert (result.windows, result.tokens, result.documents) == (windows, windows * SEQ_LEN, 20)
    assert result.files == (str(heldout_file.resolve()),)


def test_max_batches_scores_the_first_windows_only(merged, heldout_file: Path) -> None:
    out, pc_model, tokenizer = merged
    model = load_model(out, "cpu", "float32")
    source = open_heldout(str(heldout_file))
    result = heldout_loss(model, tokenizer, source, "h", run_windowing(out, seq_len=16), 3, max_batches=2)
    texts = [json.loads(line)["text"] for line in heldout_file.read_text().splitlines()]
    ids = tokenizer.encode_batch(texts)
    first_six, _ = packed_window_loss(pc_model, ids, 16, tokenizer.bos_id, tokenizer.eos_id, max_windows=6)
    everything, _ = packed_window_loss(pc_model, ids, 16, tokenizer.bos_id, tokenizer.eos_id)
    assert (result.windows, result.tokens) == (6, 96)
    assert result.loss == pytest.approx(first_six, rel=1e-5)
    assert result.loss != pytest.approx(everything, rel=1e-4)


def test_a_text_file_is_read_as_paragraphs_and_a_short_one_is_refused(merged, tmp_path: Path) -> None:
    out, _, tokenizer = merged
    model = load_model(out, "cpu", "float32")
    text = tmp_path / "notes.txt"
    text.write_text("Short.\n\nAnd brief.\n")
    with pytest.raises(EvalInputError, match="too small"):
        heldout_loss(model, tokenizer, open_heldout(str(text)), "notes.txt", run_windowing(out), 8)
    result = heldout_loss(model, tokenizer, open_heldout(str(text)), "notes.txt", run_windowing(out, 4), 8)
    assert result.documents == 2 and result.tokens == result.windows * 4


def test_windowing_needs_a_length_without_pcpretrain_json(merged, tmp_path: Path) -> None:
    out, _, _ = merged
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((out / "config.json").read_text())
    with pytest.raises(EvalInputError, match="--seq-len"):
        run_windowing(bare)
    assert run_windowing(bare, 64).seq_len == 64
    info = json.loads((out / MERGED_INFO).read_text())
    assert info["data"] == {"seq_len": SEQ_LEN, "add_bos": True, "add_eos": True}


def test_a_missing_file_is_a_bad_argument() -> None:
    with pytest.raises(EvalInputError, match="does not exist"):
        open_heldout("/nonexistent/held.jsonl")
