"""Per-layer training statistics (``logger.layer_stats``): where one layer's weights, gradients or
activations drift away from the others long before the loss shows it.

Everything is computed on the device as batched stacks (one multi-tensor kernel and one collective per
quantity, whatever the depth) and read in one transfer, only on the steps that are logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pcpretrain.compat import plain_parameter_name
from pcpretrain.pc import PCLinear, pc_modules
from pcpretrain.sharding import full_stack, full_tensor, gathered
from pcpretrain.train.callbacks.base import Callback, log_due

if TYPE_CHECKING:
    from pcpretrain.train.trainer import Trainer

log = logging.getLogger(__name__)

PREFIX = "layers"


class LayerStats(Callback):
    """Adds ``layers/<name>/weight_norm``, ``grad_norm``, ``gamma`` and ``gamma_grad`` for every PC layer
    (``<name>`` as in ``model.layers.3.mlp.up_proj``, also when compiled) on the steps loggers log
    (:func:`log_due`).

    Gradients are taken as the optimizer applies them (after clipping, in
    :meth:`on_before_optimizer_step`); weights and gammas as the step leaves them. Norms are those of
    whole tensors, also where the engine shards them. Under DeepSpeed the engine clips and steps inside
    its ``backward`` and keeps the gradients to itself: only ``weight_norm`` and ``gamma`` are logged
    there. A step that becomes the last only once finished (preemption) also lacks the gradient ones.
    """

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.layers: list[tuple[str, PCLinear]] = []
        self._grads: Tensor | None = None  # gradient norms, then gamma gradients, of the step in progress

    def on_train_start(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        self.layers = [(plain_parameter_name(name), mod) for name, mod in pc_modules(model)]
        if trainer.accelerator.is_main_process and trainer.engine_steps_in_backward and self.layers:
            log.warning(
                "logger.layer_stats: DeepSpeed applies the gradients inside its backward, so only the PC "
                "layers' weight norms and gammas are logged (no grad_norm, no gamma_grad)"
            )

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        if self.layers and log_due(trainer, self.log_every, trainer.state.step + 1):
            grads = [mod.weight.grad for _, mod in self.layers]
            gamma_grads = full_stack([mod.pc_gamma.grad for _, mod in self.layers], 0, len(self.layers))
            self._grads = torch.cat([whole_norms(grads), gamma_grads.float().reshape(-1)])

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        grads, self._grads = self._grads, None
        if not self.layers or not log_due(trainer, self.log_every):
            return
        gammas = full_stack([mod.pc_gamma for _, mod in self.layers], 0, len(self.layers))
        stats = ["weight_norm", "gamma"]
        parts = [whole_norms([mod.weight for _, mod in self.layers]), gammas.float().reshape(-1)]
        if grads is not None:
            stats += ["grad_norm", "gamma_grad"]
            parts.append(grads)
        keys = [f"{PREFIX}/{name}/{stat}" for stat in stats for name, _ in self.layers]
        metrics.update(zip(keys, torch.cat(parts).tolist(), strict=True))


class ActivationRMS:
    """An evaluation probe (:class:`~pcpretrain.train.callbacks.evaluation.EvaluationProbe`): the RMS of
    each decoder layer's output over all evaluation windows, ``layers/<i>/activation_rms``, from sums of
    squares and element counts (float64: counts pass 2**24 at scale) summed over ranks.

    How the signal's scale grows or shrinks with depth shows a layer that stopped contributing or one
    that blows up. Hooks on the decoder layers (FSDP2's sharded modules too: they see the local output)
    exist only while evaluation runs.
    """

    @contextmanager
    def watch(self, trainer: Trainer) -> Iterator[Tensor]:
        layers = decoder_layers(trainer.accelerator.unwrap_model(trainer.model))
        sums = torch.zeros((len(layers), 2), dtype=torch.float64, device=trainer.accelerator.device)
        handles = [
            layer.register_forward_hook(partial(_add_squares, sums[index]))
            for index, layer in enumerate(layers)
        ]
        try:
            yield sums
        finally:
            for handle in handles:
                handle.remove()

    def metrics(self, sums: list[float]) -> dict[str, float]:
        return {
            f"{PREFIX}/{index}/activation_rms": math.sqrt(squares / count)
            for index, (squares, count) in enumerate(zip(sums[::2], sums[1::2], strict=True))
        }


def decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    """The decoder layers of an (unwrapped) Llama, in depth order."""
    return model.model.layers


def whole_norms(tensors: Sequence[Tensor]) -> Tensor:
    """The Frobenius norm of each whole tensor as one float32 stack every rank holds: one multi-tensor
    kernel, then one collective where FSDP2 shards them (DTensor norms of shards combine exactly) or a
    gather where ZeRO-3 partitions the parameters."""
    with gathered(tensors):
        norms = torch.stack(torch._foreach_norm([tensor.detach() for tensor in tensors]))
    return full_tensor(norms).float()


def _add_squares(row: Tensor, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook: add the output's sum of squares and element count into ``row``."""
    hidden = output[0] if isinstance(output, tuple) else output
    row[0] += torch.linalg.vector_norm(hidden, dtype=torch.float32).double().square()
    row[1] += hidden.numel()
