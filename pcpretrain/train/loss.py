"""The next-token loss on packed ``seq_len + 1`` windows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_lm_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``windows[:, 1:]`` from ``windows[:, :-1]``.

    Windows are already shifted by packing, so the model's own label shifting is bypassed;
    the logits are upcast to float32 for the softmax so bf16 autocast does not bias the loss.
    """
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
