"""The step's loss, gradient norm and non-finite flag, kept on the device until someone reads them.

Reading a device value makes the host wait for the GPU; doing it inside every step leaves the GPU
idle while the host catches up. The optimizers skip a non-finite step on the device (``found_inf``),
so the host only needs to learn about it before anything is logged or saved: values are read when
logged, when a checkpoint is written and at the end, in one transfer. The first non-finite step
since the last read is remembered on the device, so none goes unnoticed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pcpretrain.errors import NonFiniteLossError


@dataclass
class StepValues:
    """The host's copy of one step's values (``extra``: other device scalars read in the same transfer)."""

    loss: float
    grad_norm: float
    extra: dict[str, float] = field(default_factory=dict)


class StepValueMonitor:
    """Records each step's device values without synchronising; :meth:`read` checks and returns them."""

    def __init__(self) -> None:
        self._latest: Tensor | None = None
        self._first_bad: Tensor | None = None  # [step, loss, grad_norm] of the first non-finite step
        self._read: StepValues | None = None

    @staticmethod
    def nonfinite(loss: Tensor, grad_norm: Tensor) -> Tensor:
        """1.0 where the loss or the gradient norm is not finite, else 0.0: an optimizer's ``found_inf``."""
        values = torch.stack([loss.float(), grad_norm.float().to(loss.device)])
        return (~torch.isfinite(values).all()).float()

    def record(self, step: int, loss: Tensor, grad_norm: Tensor, nonfinite: Tensor) -> None:
        """Keep step ``step``'s values on the device (no host synchronisation)."""
        loss = loss.float()
        latest = torch.stack([loss.new_full((), float(step)), loss, grad_norm.float().to(loss.device)])
        self._latest = latest
        first_bad = torch.zeros_like(latest) if self._first_bad is None else self._first_bad
        self._first_bad = torch.where((first_bad[0] == 0) & (nonfinite > 0), latest, first_bad)
        self._read = None

    def read(self, extra: Mapping[str, Tensor] | None = None) -> StepValues:
        """The latest step's values and ``extra``, in one device-to-host transfer; raises if any step
        since the last read was non-finite (that step was skipped on the device, never applied)."""
        if self._read is not None and not extra:
            return self._read
        if self._latest is None or self._first_bad is None:
            raise RuntimeError("no step has been recorded yet")
        device = self._latest.device
        extras = [value.detach().float().reshape(1).to(device) for value in (extra or {}).values()]
        flat = torch.cat([self._first_bad, self._latest, *extras]).tolist()
        step_bad, loss_bad, norm_bad, _, loss, grad_norm = flat[:6]
        if step_bad:
            raise NonFiniteLossError(
                f"non-finite values at step {int(step_bad)}: loss={loss_bad}, grad_norm={norm_bad}; "
                "the optimizer step was not taken (skipped on the device) and no checkpoint was written "
                "after the last good one"
            )
        self._read = StepValues(loss, grad_norm, dict(zip(extra or {}, flat[6:], strict=True)))
        return self._read

    @property
    def unread(self) -> bool:
        return self._latest is not None and self._read is None


def check_finite_now(step: int, loss: float, grad_norm: float = 0.0, step_taken: bool = False) -> None:
    """The host-side check for engines that apply the step themselves (DeepSpeed steps in ``backward``)."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    taken = "the engine had already applied this step" if step_taken else "the optimizer step was not taken"
    raise NonFiniteLossError(
        f"non-finite values at step {step}: loss={loss}, grad_norm={grad_norm}; "
        f"{taken} and no checkpoint was written after the last good one"
    )
