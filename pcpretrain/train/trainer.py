"""The training loop. One optimizer step, in the order it happens, reads top to bottom in
:meth:`Trainer.train_step`: begin the PC step, micro-batches, finish the PC step, clip, optimizer,
spectral update, counters. Callbacks only observe the loop (also between clipping and the optimizer
step) and add metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn

from pcpretrain.choices import LOSS_CHUNK_TOKENS
from pcpretrain.compat import zero3_copy_next_gradients
from pcpretrain.pc import PCStep
from pcpretrain.sharding import full_tensor
from pcpretrain.train.callbacks.base import Callback
from pcpretrain.train.callbacks.profiler import phase
from pcpretrain.train.loss import causal_lm_loss
from pcpretrain.train.state import TrainState
from pcpretrain.train.step_values import StepValueMonitor, check_finite_now


class StepBatches(Protocol):
    """A resumable source of the micro-batches that make up each optimizer step."""

    def next_step(self) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...


def skips_nonfinite_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor: torch's fused optimizers and Muon."""
    return bool(optimizer.defaults.get("fused"))


def learning_rates(param_groups: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The step's lr of each parameter category (``lr/<category>``) and, as ``lr``, the hidden
    matrices' (the config's ``optimizer.lr``, scaled by the schedule)."""
    by_category = {f"lr/{group.get('category', i)}": group["lr"] for i, group in enumerate(param_groups)}
    main = by_category.get("lr/hidden_matrix", param_groups[0]["lr"])
    return {"lr": main, **by_category}


class Trainer:
    """Runs optimizer steps until ``stop_at`` (or ``max_steps``); callbacks observe each moment.

    No step reads a device value on the host unless a callback needs the step's loss (logging,
    evaluation, checkpoints; see :mod:`pcpretrain.train.step_values`), so the host can queue the next
    step's work while the device finishes this one.
    """

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
        loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
        pc_step: PCStep | None = None,
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
        self.pc_step = pc_step
        self.callbacks = list(callbacks)
        self.step_values = StepValueMonitor()
        # The torch optimizer behind accelerate's wrapper, which is where ``found_inf`` is read.
        self._torch_optimizer = getattr(optimizer, "optimizer", optimizer)

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

    def confirm_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if any step so far was non-finite (before saving anything)."""
        if self.step_values.unread:
            self.step_values.read()

    def fit(self) -> None:
        """Train from ``state.step`` to the last step; callbacks see every moment."""
        try:
            self._emit("on_train_start")
            while self.state.step < self.last_step:
                self._emit("on_step_start")
                lrs = learning_rates(self.optimizer.param_groups)
                self.train_step()
                metrics: dict[str, Any] = {"step": self.state.step, **lrs}
                if any(callback.needs_step_values(self) for callback in self.callbacks):
                    extra = self.pc_step.statistics() if self.pc_step is not None else {}
                    values = self.step_values.read(extra)
                    metrics.update(loss=values.loss, grad_norm=values.grad_norm, **values.extra)
                self._emit("on_step_end", metrics)
            self.confirm_finite()
            self._emit("on_train_end")
        except BaseException as error:
            self._emit("on_error", error)
            raise

    def train_step(self) -> None:
        """One optimizer step over the step's micro-batches; a non-finite step is never applied.

        ``accelerator.accumulate`` skips the gradient all-reduce on all but the last micro-batch and
        scales each loss by the number of micro-batches.
        """
        self.model.train()
        micro_batches = self.train_batches.next_step()
        if self.pc_step is not None:
            with phase("pc begin"):
                self.pc_step.begin()
        with phase("micro-batches"):
            loss = self._micro_batches(micro_batches)
        if self.pc_backward_in_engine:
            # The engine steps inside this last backward, which delivers the PC gradients.
            check_finite_now(self.state.step + 1, loss.item())
            with phase("pc finish and engine step"):
                self.pc_step.finish_through(self._engine_backward_and_step)
        elif self.pc_step is not None:
            with phase("pc finish"):
                self.pc_step.finish()
        with phase("clip"):
            grad_norm = (
                self._engine_grad_norm(loss) if self.engine_steps_in_backward else self._clip_gradients()
            )
        nonfinite = StepValueMonitor.nonfinite(loss, grad_norm)
        if not self.engine_steps_in_backward:
            self._emit("on_before_optimizer_step")
            with phase("optimizer"):
                self._optimizer_step(loss, grad_norm, nonfinite)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.pc_step is not None:
            with phase("pc spectral update"):
                self.pc_step.update_spectral()
        self.state.step += 1
        self.state.tokens += (
            sum(w.size(0) * (w.size(1) - 1) for w in micro_batches) * self.accelerator.num_processes
        )
        self.step_values.record(self.state.step, loss, grad_norm, nonfinite)

    def _micro_batches(self, micro_batches: list[Tensor]) -> Tensor:
        """Forward and backward of every micro-batch; returns the step's mean loss over all ranks."""
        loss_sum = torch.zeros((), device=self.accelerator.device)
        for index, windows in enumerate(micro_batches):
            windows = windows.to(self.accelerator.device, non_blocking=True)
            with self.accelerator.accumulate(self.model):
                with self.accelerator.autocast():
                    loss = causal_lm_loss(self.model, windows, chunk_tokens=self.loss_chunk_tokens)
                loss_sum += loss.detach()
                if self.pc_backward_in_engine:
                    self.accelerator.deepspeed_engine_wrapped.backward(loss, sync_gradients=False)
                    continue
                if index == len(micro_batches) - 1 and self.engine_steps_in_backward:
                    # The engine applies the step inside this backward: the loss must be known first.
                    mean = self.accelerator.reduce(loss_sum, reduction="mean").item() / len(micro_batches)
                    check_finite_now(self.state.step + 1, mean)
                self.accelerator.backward(loss)
        return self.accelerator.reduce(loss_sum, reduction="mean") / len(micro_batches)

    def _engine_backward_and_step(self, surrogate: Tensor) -> None:
        """The step's last backward under DeepSpeed, of the PC gradients' surrogate, then its step.

        The micro-batch losses were already scaled by the accumulation steps; the PC gradients too.
        """
        wrapped = self.accelerator.deepspeed_engine_wrapped
        zero3_copy_next_gradients(wrapped.engine)
        wrapped.backward(surrogate, sync_gradients=True, scale_wrt_gas=False)

    def _clip_gradients(self) -> Tensor:
        """Clip to ``grad_clip`` (0: no clipping) and return the total norm, as a device tensor."""
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        return full_tensor(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))

    def _optimizer_step(self, loss: Tensor, grad_norm: Tensor, nonfinite: Tensor) -> None:
        """The optimizer step, skipped on the device when the loss or gradient norm is not finite."""
        if skips_nonfinite_on_device(self._torch_optimizer):
            self._torch_optimizer.found_inf = nonfinite
        else:
            check_finite_now(self.state.step + 1, *torch.stack([loss, grad_norm.to(loss.device)]).tolist())
        self.optimizer.step()

    def _engine_grad_norm(self, loss: Tensor) -> Tensor:
        """DeepSpeed clipped and stepped inside ``backward``; its norm is known only now (host check)."""
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        check_finite_now(self.state.step + 1, 0.0, grad_norm, step_taken=True)
        return torch.tensor(grad_norm, device=loss.device)

    @property
    def pc_backward_in_engine(self) -> bool:
        """Per-step PC under DeepSpeed: its gradients reach the engine through one more backward."""
        return self.engine_steps_in_backward and self.pc_step is not None and self.pc_step.per_step

    @property
    def engine_steps_in_backward(self) -> bool:
        """DeepSpeed clips and steps inside ``backward``; its gradient norm is known only afterwards."""
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
