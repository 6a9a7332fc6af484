"""lm-eval tasks on a merged model: a local multiple-choice task scored as a direct computation scores it;
unknown tasks, a missing lm-eval and an unreachable Hub give one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from eval_helpers import (
    TASK,
    direct_choice_accuracy,
    docstring_corpus,
    offline,
    tiny_merged_model,
    write_choice_task,
)

from pcpretrain.analysis import downstream
from pcpretrain.analysis.downstream import flat_scores, run_tasks, task_manager
from pcpretrain.analysis.eval_errors import EvalError, EvalInputError
from pcpretrain.analysis.merged_model import load_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("downstream") / "step_00000007-merged"
    tiny_merged_model(out, docstring_corpus()[:300])
    return out


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    write_choice_task(root / "yaml", root)
    return root / "yaml"


def test_a_local_task_scores_what_a_direct_loglikelihood_computation_gives(merged: Path, tasks: Path) -> None:
    pytest.importorskip("lm_eval")
    from transformers import AutoTokenizer

    model, tokenizer = load_model(merged, "cpu", "float32"), AutoTokenizer.from_pretrained(merged)
    manager = task_manager([TASK], [tasks])
    assert manager.all_tasks == [TASK]  # every name is local: lm-eval's built-in index is not built
    results = run_tasks(model, tokenizer, [TASK], manager, batch_size=4)
    assert "samples" not in results and results["n-shot"][TASK] == 0
    scores = flat_scores(results)
    assert scores == {f"{TASK}/acc": pytest.approx(direct_choice_accuracy(model, tokenizer), abs=1e-12)}


def test_flat_scores_keep_metrics_and_drop_standard_errors_and_labels() -> None:
    results = {
        "results": {
            "piqa": {"alias": "piqa", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25},
            "gsm8k": {"exact_match,strict-match": 0.125, "exact_match_stderr,strict-match": "N/A"},
        },
        "groups": {"mmlu": {"acc,none": 0.3, "sample_len": 10}},
    }
    assert flat_scores(results) == {
        "piqa/acc": 0.5,
        "piqa/acc_norm": 0.25,
        "gsm8k/exact_match/strict-match": 0.125,
        "mmlu/acc": 0.3,
    }


def test_an_unknown_task_is_refused_with_the_closest_names(monkeypatch: pytest.MonkeyPatch) -> None:
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")

    class KnownTasks:
        def __init__(self, include_path=None, include_defaults: bool = True) -> None:
            self.all_tasks = ["hellaswag", "lambada_openai", "lambada_standard"]
            self.all_subtasks = self.all_tasks

    monkeypatch.setattr(lm_eval_tasks, "TaskManager", KnownTasks)
    with pytest.raises(
        EvalInputError, match=r"unknown lm-eval task 'lambada_opena' \(did you mean lambada_openai"
    ):
        task_manager(["hellaswag", "lambada_opena"])


def test_a_task_whose_data_is_not_reachable_says_how_to_work_offline(
    merged: Path, tasks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("lm_eval")
    import datasets
    from transformers import AutoTokenizer

    def unreachable(*args, **kwargs):  # what datasets raises for a Hub dataset that is not cached, offline
        raise ConnectionError("Couldn't reach 'EleutherAI/lambada_openai' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    model, tokenizer = load_model(merged, "cpu", "float32"), AutoTokenizer.from_pretrained(merged)
    with pytest.raises(EvalError) as caught:
        run_tasks(model, tokenizer, [TASK], task_manager([TASK], [tasks]))
    message = str(caught.value)
    assert "EleutherAI/lambada_openai" in message and "\n" not in message
    assert "HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1" in message and "--include-path" in message


def test_without_lm_eval_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "lm_eval" or name.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(EvalError, match=r'pip install -e "\.\[eval\]"'):
        task_manager(["hellaswag"])
    assert downstream.LM_EVAL_MISSING.startswith("lm-eval is not installed")
