"""Validation loss is the token mean over all held-out windows, whatever the batch split."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from pcpretrain.config import ModelConfig
from pcpretrain.model import build_model
from pcpretrain.train.callbacks.evaluation import evaluate
from pcpretrain.train.loss import causal_lm_loss


@pytest.mark.parametrize("chunk_tokens", [0, 7])
def test_uneven_last_batch_is_weighted_by_its_windows(chunk_tokens: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), 50)
    trainer = SimpleNamespace(model=model, accelerator=Accelerator(cpu=True), loss_chunk_tokens=chunk_tokens)
    windows = torch.randint(0, 50, (5, 17))
    with torch.no_grad():
        reference = causal_lm_loss(model, windows, chunk_tokens=0).item()
    split = evaluate(trainer, [windows[:4], windows[4:]])
    assert abs(split - reference) < 1e-5
    assert model.training
