"""Helpers for the ``pcpretrain eval`` tests: a small merged model, a local lm-eval task, and the
independent computations the command's numbers are checked against."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pcpretrain import pc
from pcpretrain.choices import DEFAULT_PC_TARGETS
from pcpretrain.config import ModelConfig, TrainConfig
from pcpretrain.data.sample_corpus import docstrings_of
from pcpretrain.data.tokenizer import Tokenizer, train_sentencepiece
from pcpretrain.export import run_info, write_merged_model
from pcpretrain.model import build_model

TASK = "pcp_local_choice"
# Each choice differs in text and length from the others, so no two scores tie.
CHOICES = [
    {"question": "The function returns the", "choices": ["value", "string of bytes", "x"], "answer": 0},
    {"question": "Raise an error if the file", "choices": ["does not exist", "cat", "is"], "answer": 0},
    {"question": "Return a new list of", "choices": ["items", "blue sky over the sea"], "answer": 1},
    {
        "question": "The default encoding is",
        "choices": ["UTF-8", "seven", "not used here at all"],
        "answer": 2,
    },
    {"question": "This module provides", "choices": ["functions", "an orange"], "answer": 0},
]


def docstring_corpus() -> list[str]:
    """About 500 documents of real English from a few standard-library modules, read in a second."""
    import argparse
    import collections
    import dataclasses
    import functools
    import inspect
    import logging
    import pathlib
    import textwrap
    import typing

    modules = [argparse, pathlib, textwrap, logging, inspect, typing, dataclasses, functools, collections]
    return [
        doc for module in modules for doc in docstrings_of(Path(module.__file__).read_text(encoding="utf-8"))
    ]


def offline(monkeypatch) -> None:
    """Nothing in these tests may reach the network."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path: Path, texts: Sequence[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path


def tiny_merged_model(
    out_dir: Path, documents: Sequence[str], seq_len: int = 32, degree: int = 4
) -> tuple[nn.Module, Tokenizer]:
    """A randomly initialised PC model merged into ``out_dir`` (as training would, at step 7); the PC
    model itself and the tokenizer trained on ``documents``."""
    tokenizer = train_sentencepiece(list(documents), 400, out_dir.parent / f"{out_dir.name}.model")
    cfg = TrainConfig()
    cfg.model = ModelConfig(hidden_size=32, intermediate_size=80, num_layers=2, num_heads=4, max_seq_len=128)
    cfg.data.seq_len = seq_len
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    pc.apply_pc(model, degree, DEFAULT_PC_TARGETS, power_iters=10, seed=0)
    write_merged_model(
        model.state_dict(),
        model_cfg=cfg.model,
        pc_degree=degree,
        tokenizer=tokenizer,
        out_dir=out_dir,
        info=run_info(cfg, 7),
    )
    return model.eval(), tokenizer


@torch.no_grad()
def packed_window_loss(
    model: nn.Module,
    token_lists: Sequence[Sequence[int]],
    seq_len: int,
    bos: int,
    eos: int,
    max_windows: int | None = None,
) -> tuple[float, int]:
    """Token-mean loss over the full ``seq_len + 1`` windows (stride ``seq_len``, the first ``max_windows``)
    of the documents packed as ``[bos] ids [eos]``, cut here independently of the package's packing; and
    the number of windows."""
    stream = [token for ids in token_lists if ids for token in [bos, *ids, eos]]
    count = min((len(stream) - 1) // seq_len, max_windows or len(stream))
    windows = torch.tensor([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(count)])
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1))
    return float(loss), count


def write_choice_task(task_dir: Path, data_dir: Path) -> str:
    """A multiple-choice lm-eval task over a local jsonl file (no Hub), with its own datasets cache."""
    data = data_dir / "choices.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in CHOICES), encoding="utf-8")
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {json.dumps(str(data))}\n"
        f"  cache_dir: {json.dumps(str(data_dir / 'datasets-cache'))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return TASK


@torch.no_grad()
def direct_choice_accuracy(model: nn.Module, hf_tokenizer) -> float:
    """Accuracy on :data:`CHOICES` by summed log-likelihood of `` <choice>`` after the question, with the
    tokenizer's BOS; how a 0-shot multiple-choice task is scored, computed here without lm-eval."""
    correct = 0
    for row in CHOICES:
        context = hf_tokenizer(row["question"])["input_ids"]
        scores = []
        for choice in row["choices"]:
            whole = hf_tokenizer(f"{row['question']} {choice}")["input_ids"]
            logprobs = (
                model(input_ids=torch.tensor([whole[:-1]]), use_cache=False).logits[0].float().log_softmax(-1)
            )
            scores.append(
                sum(float(logprobs[p, whole[p + 1]]) for p in range(len(context) - 1, len(whole) - 1))
            )
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return correct / len(CHOICES)
