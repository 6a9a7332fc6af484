"""PCLinear: an nn.Linear whose forward uses the preconditioned weight W_eff instead of W.

The raw W stays the trainable parameter under its plain Llama name; merging stores W_eff and yields
an ordinary Llama. W_eff comes either from :func:`effective_weight` in every forward (the reference
way) or, on the per-step path, from :class:`pcpretrain.pc.step.PCStep`, which computes it once per
optimizer step for all layers together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcpretrain.pc.polynomial import check_degree
from pcpretrain.pc.precision import compute_dtype, cuda_tf32
from pcpretrain.pc.spectral import power_iteration_, spectral_norm_estimate
from pcpretrain.pc.transform import effective_weight

PC_SUFFIXES = ("pc_gamma", "pc_u", "pc_v")


def _random_unit(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    vec = torch.randn(n, generator=generator, dtype=torch.float64)  # on the generator's (CPU) device
    return F.normalize(vec, dim=0).to(device=like.device, dtype=compute_dtype(like.dtype))


class PCLinear(nn.Linear):
    """nn.Linear whose forward uses the preconditioned weight.

    It holds the very Parameter objects of the linear it replaces, so raw weights keep their plain
    Llama state-dict names and optimizer/sharding code sees the same tensors; only pc_gamma, pc_u and
    pc_v are added.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        degree: int,
        power_iters: int,
        generator: torch.Generator,
    ) -> None:
        nn.Module.__init__(self)  # skip nn.Linear.__init__: no new weight, no reset, no global RNG use
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = bias
        self.degree = check_degree(degree)
        self.power_iters = int(power_iters)
        self.pc_gamma = nn.Parameter(torch.ones(1, dtype=weight.dtype, device=weight.device))
        self.register_buffer("pc_u", _random_unit(self.out_features, generator, weight))
        self.register_buffer("pc_v", _random_unit(self.in_features, generator, weight))
        # Set between begin_step and take_step_grad: W_eff shared by all micro-batches of one step (in the
        # forward's compute dtype), and the float32 sum of their gradients with respect to it.
        self.step_weight: Tensor | None = None
        self.step_grad: Tensor | None = None
        self._step_grad_empty = True  # no gradient copied into step_grad yet this step
        # TF32 for the transform's float32 matmuls on CUDA when W_eff is computed in the forward (pc.tf32).
        self.tf32 = True

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, degree: int, power_iters: int, generator: torch.Generator
    ) -> PCLinear:
        return cls(linear.weight, linear.bias, degree, power_iters, generator)

    def effective_weight(self) -> Tensor:
        return effective_weight(self.weight, self.pc_gamma, self.pc_u, self.pc_v, self.degree)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.step_weight
        if weight is None:
            with cuda_tf32(self.tf32):
                weight = self.effective_weight()
        return F.linear(x, weight, self.bias)

    @torch.no_grad()
    def begin_step(self, weight: Tensor, grad_sum: Tensor) -> None:
        """Use ``weight`` (this step's W_eff, in the dtype the forward's matmul runs in) in every forward
        until :meth:`take_step_grad`, summing the micro-batches' gradients with respect to it into
        ``grad_sum`` (float32, contents ignored: the first gradient is copied in, so the buffer needs
        no zeroing pass) as soon as each arrives, as a float32 parameter accumulates ``.grad``.
        Both may be views into stacks shared by all same-shaped layers; nothing is copied."""
        leaf = weight.detach().requires_grad_(True)
        leaf.register_post_accumulate_grad_hook(self._collect_step_grad)
        self.step_weight, self.step_grad = leaf, grad_sum
        self._step_grad_empty = True

    def _collect_step_grad(self, leaf: Tensor) -> None:
        grad, leaf.grad = leaf.grad, None
        self.add_step_grad(grad)

    @torch.no_grad()
    def add_step_grad(self, grad: Tensor) -> None:
        """Add one micro-batch's dL/dW_eff to this step's sum."""
        if self.step_grad is None:
            raise RuntimeError("add_step_grad called outside a step: begin_step was not called")
        if self._step_grad_empty:
            self.step_grad.copy_(grad)
            self._step_grad_empty = False
        else:
            self.step_grad.add_(grad)

    def take_step_grad(self) -> Tensor:
        """This step's summed dL/dW_eff (zeros if no micro-batch reached this layer), leaving the step:
        later forwards compute W_eff themselves."""
        grad = self.step_grad
        if grad is None:
            raise RuntimeError("take_step_grad called outside a step: begin_step was not called")
        if self._step_grad_empty:
            grad.zero_()
        self.step_weight = self.step_grad = None
        return grad

    def update_spectral_estimate(self) -> None:
        """Warm-started power iteration of this layer alone (training runs all layers as stacks)."""
        power_iteration_(self.weight, self.pc_u, self.pc_v, self.power_iters)

    @torch.no_grad()
    def sigma(self) -> float:
        """The current spectral-norm estimate u^T W v, on the host (for inspection and tests)."""
        w = self.weight.detach()
        return float(spectral_norm_estimate(w.to(compute_dtype(w.dtype)), self.pc_u, self.pc_v))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, degree={self.degree}, power_iters={self.power_iters}"


def pc_modules(model: nn.Module) -> list[tuple[str, PCLinear]]:
    """The PC layers of ``model`` with their names, in module order."""
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, PCLinear)]
