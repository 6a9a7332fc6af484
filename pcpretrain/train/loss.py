"""The next-token loss on packed ``seq_len + 1`` windows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pcpretrain.config import TrainerConfig


def causal_lm_loss(
    model: nn.Module, windows: torch.Tensor, chunk_tokens: int = TrainerConfig.loss_chunk_tokens
) -> torch.Tensor:
    """Mean cross-entropy of predicting ``windows[:, 1:]`` from ``windows[:, :-1]``.

    Windows are already shifted by packing, so the model's own label shifting is bypassed. With
    ``chunk_tokens`` > 0 the model (a :class:`pcpretrain.model.PretrainingLlama`, possibly wrapped by an
    engine) computes the loss itself, that many tokens' logits at a time; with 0 all logits are computed
    at once. Either way the softmax runs in float32 so bf16 autocast does not bias the loss.
    """
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be >= 0 (0: all logits at once), got {chunk_tokens}")
    inputs, targets = windows[:, :-1], windows[:, 1:]
    if chunk_tokens > 0:
        loss = model(input_ids=inputs, targets=targets, loss_chunk_tokens=chunk_tokens, use_cache=False).loss
        if loss is None:
            raise TypeError(
                f"{type(model).__name__} returned no loss for targets=; build it with "
                "pcpretrain.model.build_model or pass chunk_tokens=0"
            )
        return loss
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
