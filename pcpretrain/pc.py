"""PC layers: linear layers whose forward uses the preconditioned weight W_eff, and model surgery.

The transform itself lives in :mod:`pcpretrain.pc_math`. The raw W stays the trainable parameter
under its plain Llama name; merging stores W_eff and yields an ordinary Llama.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcpretrain.pc_math import (
    check_degree,
    compute_dtype,
    effective_weight,
    effective_weight_vjp,
    power_iteration_,
    spectral_norm_estimate,
)

DEFAULT_TARGETS: tuple[str, ...] = (
    "*.mlp.gate_proj",
    "*.mlp.up_proj",
    "*.mlp.down_proj",
    "*.self_attn.o_proj",
)
_PC_SUFFIXES = ("pc_gamma", "pc_u", "pc_v")


def _random_unit(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    vec = torch.randn(n, generator=generator, dtype=torch.float64)  # on the generator's (CPU) device
    return F.normalize(vec, dim=0).to(device=like.device, dtype=compute_dtype(like.dtype))


def _add_grad(param: Tensor, grad: Tensor) -> None:
    param.grad = grad if param.grad is None else param.grad.add_(grad)


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
        # Set between begin_step and finish_step: W_eff shared by all micro-batches of one step (in the
        # forward's compute dtype), and the float32 sum of their gradients with respect to it.
        self.step_weight: Tensor | None = None
        self.step_grad: Tensor | None = None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, degree: int, power_iters: int, generator: torch.Generator
    ) -> PCLinear:
        return cls(linear.weight, linear.bias, degree, power_iters, generator)

    def effective_weight(self) -> Tensor:
        return effective_weight(self.weight, self.pc_gamma, self.pc_u, self.pc_v, self.degree)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.step_weight if self.step_weight is not None else self.effective_weight()
        return F.linear(x, weight, self.bias)

    @torch.no_grad()
    def begin_step(self, weight: Tensor | None = None, dtype: torch.dtype | None = None) -> None:
        """Compute W_eff once for the coming optimizer step (or take ``weight``, W_eff computed by
        another rank) and keep it in ``dtype``, the dtype the forward's matmul runs in (bf16 under
        autocast), so the step holds no float32 copy of it.

        Each micro-batch's gradient, rounded to ``dtype`` as autocast's would be, is added to a float32
        sum as soon as it arrives, exactly as a float32 parameter accumulates its ``.grad``.
        """
        full = self.effective_weight() if weight is None else weight
        leaf = full.to(dtype or full.dtype).requires_grad_(True)
        leaf.register_post_accumulate_grad_hook(self._collect_step_grad)
        self.step_weight, self.step_grad = leaf, None

    def _collect_step_grad(self, leaf: Tensor) -> None:
        grad, leaf.grad = leaf.grad, None
        if self.step_grad is None:
            self.step_grad = grad.to(compute_dtype(grad.dtype))
        else:
            self.step_grad.add_(grad)

    def take_step_grad(self) -> Tensor:
        """This step's summed dL/dW_eff (zeros if no micro-batch reached the layer), leaving the step."""
        grad = self.step_grad
        if grad is None:
            grad = torch.zeros(
                self.weight.shape, dtype=compute_dtype(self.weight.dtype), device=self.weight.device
            )
        self.step_weight = self.step_grad = None
        return grad

    def finish_step(self, grad: Tensor) -> None:
        """Push the step's dL/dW_eff (:meth:`take_step_grad`, or its sum over ranks) through the transform
        once, in closed form (:func:`effective_weight_vjp`), into the weight's and gamma's ``.grad``."""
        grad_weight, grad_gamma = effective_weight_vjp(
            self.weight, self.pc_gamma, self.pc_u, self.pc_v, self.degree, grad
        )
        _add_grad(self.weight, grad_weight)
        _add_grad(self.pc_gamma, grad_gamma)

    def update_spectral_estimate(self, weight: Tensor | None = None) -> None:
        """Warm-started power iteration on ``weight`` (the whole matrix when ``self.weight`` is sharded)."""
        power_iteration_(self.weight if weight is None else weight, self.pc_u, self.pc_v, self.power_iters)

    @torch.no_grad()
    def sigma(self) -> float:
        w = self.weight.detach()
        return float(spectral_norm_estimate(w.to(compute_dtype(w.dtype)), self.pc_u, self.pc_v))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, degree={self.degree}, power_iters={self.power_iters}"


def pc_modules(model: nn.Module) -> list[tuple[str, PCLinear]]:
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, PCLinear)]


def apply_pc(
    model: nn.Module,
    degree: int,
    targets: Sequence[str] = DEFAULT_TARGETS,
    power_iters: int = 10,
    seed: int = 0,
) -> list[str]:
    """Swap matching nn.Linear modules for PCLinear in place and return their names.

    Every pattern must match something (a typo would otherwise silently train a plain model). u, v come
    from one generator seeded with `seed` in named_modules order, so all ranks get identical buffers.
    """
    if check_degree(degree) == 0:
        return []
    if pc_modules(model):
        raise ValueError("model already contains PC modules; apply_pc must be called once")
    linears = [name for name, mod in model.named_modules() if name and isinstance(mod, nn.Linear)]
    for pattern in targets:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in linears):
            examples = ", ".join(linears[:6]) or "<none>"
            raise ValueError(
                f"PC target pattern {pattern!r} matches no nn.Linear module; example names: {examples}"
            )
    names = [name for name in linears if any(fnmatch.fnmatchcase(name, p) for p in targets)]
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, PCLinear.from_linear(getattr(parent, attr), degree, power_iters, generator))
    update_spectral_estimates(model)  # the "once before training" power iteration
    return names


def begin_step(model: nn.Module, dtype: torch.dtype | None = None) -> None:
    """Start an optimizer step on the per-step path: every PC layer computes W_eff once."""
    for _, mod in pc_modules(model):
        mod.begin_step(dtype=dtype)


def finish_step(model: nn.Module) -> None:
    """End the step: one backward through each transform; later forwards recompute W_eff again."""
    for _, mod in pc_modules(model):
        mod.finish_step(mod.take_step_grad())


# Gives read access to the whole tensor behind a parameter; identity unless an engine shards it.
WeightView = Callable[[Tensor], AbstractContextManager[Tensor]]


def update_spectral_estimates(model: nn.Module, weight_view: WeightView = nullcontext) -> None:
    """Refresh u, v of every PC module; call after each optimizer step (not per forward)."""
    for _, mod in pc_modules(model):
        with weight_view(mod.weight) as weight:
            mod.update_spectral_estimate(weight)


@torch.no_grad()
def pc_statistics(model: nn.Module, weight_view: WeightView = nullcontext) -> dict[str, float]:
    """Summary of gammas and sigma estimates for logging, with a single device sync."""
    mods = [mod for _, mod in pc_modules(model)]
    if not mods:
        return {}
    gamma_list, sigma_list = [], []
    for m in mods:
        with weight_view(m.pc_gamma) as gamma, weight_view(m.weight) as weight:
            gamma_list.append(gamma.detach().float().reshape(()))
            sigma_list.append(spectral_norm_estimate(weight.detach().float(), m.pc_u, m.pc_v).float())
    gammas = torch.stack(gamma_list)
    sigmas = torch.stack(sigma_list).to(gammas.device)
    stats = torch.stack([gammas.mean(), gammas.min(), gammas.max(), sigmas.mean(), sigmas.max()]).tolist()
    keys = ("pc/gamma_mean", "pc/gamma_min", "pc/gamma_max", "pc/sigma_mean", "pc/sigma_max")
    return dict(zip(keys, stats, strict=True))


def _key(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


@torch.no_grad()
def merge_state_dict(state_dict: Mapping[str, Tensor], degree: int) -> dict[str, Tensor]:
    """Fold each PC layer into a plain weight (W_eff) and drop the PC entries; the input is not modified.

    Uses the training-time effective_weight, so the merged plain Llama reproduces the PC model exactly.
    """
    check_degree(degree)
    prefixes = {k.rpartition(".")[0] for k in state_dict if k.rpartition(".")[2] in _PC_SUFFIXES}
    merged: dict[str, Tensor] = {}
    for prefix in prefixes:
        keys = {leaf: _key(prefix, leaf) for leaf in ("weight", *_PC_SUFFIXES)}
        missing = [k for k in keys.values() if k not in state_dict]
        if missing:
            raise KeyError(f"cannot merge PC layer {prefix!r}: state dict lacks {missing}")
        weight = state_dict[keys["weight"]]
        merged[keys["weight"]] = effective_weight(
            weight, state_dict[keys["pc_gamma"]], state_dict[keys["pc_u"]], state_dict[keys["pc_v"]], degree
        ).to(weight.dtype)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in prefixes and leaf in _PC_SUFFIXES:
            continue
        out[key] = merged.get(key, value)
    return out
