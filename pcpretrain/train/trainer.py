"""The training loop: micro-batches, one optimizer step, callbacks. Nothing else lives here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from pcpretrain.config import TrainerConfig
from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.errors import NonFiniteLossError
from pcpretrain.train.loss import causal_lm_loss
from pcpretrain.train.state import TrainState


class StepBatches(Protocol):
    """A resumable source of the micro-batches that make up each optimizer step."""

    def next_step(self) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...


class Trainer:
    """Runs optimizer steps until ``stop_at`` (or ``max_steps``), delegating everything else to callbacks."""

    def __init__(
        self,
        *,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_batches: StepBatches,
        state: TrainState,
        max_steps: int,
        stop_at: int | None = None,
        grad_clip: float = 1.0,
        loss_chunk_tokens: int = TrainerConfig.loss_chunk_tokens,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_batches = train_batches
        self.state = state
        self.max_steps = max_steps
        self.last_step = stop_at if stop_at is not None else max_steps
        self.grad_clip = grad_clip
        # Tokens per chunk of the fused LM-head loss (0: all logits at once); evaluation uses it too.
        self.loss_chunk_tokens = loss_chunk_tokens
        self.callbacks = list(callbacks)

    @property
    def schedule_finished(self) -> bool:
        """True once the step counter reached the schedule's end (not merely ``stop_at``)."""
        return self.state.step >= self.max_steps

    @property
    def at_last_step(self) -> bool:
        return self.state.step >= self.last_step

    def stop_after_this_step(self) -> None:
        """End the run at the current step (preemption); callbacks then treat it as the last step."""
        self.last_step = self.state.step

    def fit(self) -> None:
        """Train from ``state.step`` to the last step; callbacks see every moment."""
        try:
            self._emit("on_train_start")
            while self.state.step < self.last_step:
                self._emit("on_step_start")
                metrics = self.train_step()
                self._emit("post_optim_step")
                self.state.step += 1
                metrics["step"] = self.state.step
                self._emit("on_step_end", metrics)
            self._emit("on_train_end")
        except BaseException as error:
            self._emit("on_error", error)
            raise

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over the step's micro-batches; refuses to step on a non-finite loss.

        ``accelerator.accumulate`` skips the gradient all-reduce on all but the last micro-batch and
        scales each loss by the number of micro-batches; under DeepSpeed the engine steps inside the
        last ``backward``, so the loss is checked before that backward runs.
        """
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        micro_batches = self.train_batches.next_step()
        loss_sum = torch.zeros((), device=self.accelerator.device)
        loss_value = math.nan
        for index, windows in enumerate(micro_batches):
            windows = windows.to(self.accelerator.device, non_blocking=True)
            with self.accelerator.accumulate(self.model):
                with self.accelerator.autocast():
                    loss = causal_lm_loss(self.model, windows, chunk_tokens=self.loss_chunk_tokens)
                loss_sum += loss.detach()
                if index == len(micro_batches) - 1:
                    loss_value = self.accelerator.reduce(loss_sum, reduction="mean").item() / len(
                        micro_batches
                    )
                    self._check_finite(loss_value, 0.0, step_taken=False)
                self.accelerator.backward(loss)
        self._emit("pre_optim_step")
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))
        self._check_finite(loss_value, grad_norm, step_taken=self.engine_steps_in_backward)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}

    @property
    def engine_steps_in_backward(self) -> bool:
        """DeepSpeed clips and steps inside ``backward``; its gradient norm is known only afterwards."""
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def _check_finite(self, loss: float, grad_norm: float, step_taken: bool) -> None:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        taken = (
            "the engine had already applied this step" if step_taken else "the optimizer step was not taken"
        )
        raise NonFiniteLossError(
            f"non-finite values at step {self.state.step + 1}: loss={loss}, grad_norm={grad_norm}; "
            f"{taken} and no checkpoint was written after the last good one"
        )

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
