"""Polynomial preconditioning (PC) of linear layers.

A target weight W (m x n, out x in) is used in the forward pass as

    sigma = u^T W v + eps                      (power-iteration estimate of ||W||_2, differentiable in W)
    X     = W / sigma
    P     = X q_k(X^T X)  if m >= n  else  q_k(X X^T) X
    W_eff = gamma * stopgrad(sigma) * P

so every singular value s of X is mapped to s * q_k(s^2), which flattens the spectrum. The raw W stays
the trainable parameter under its plain Llama name; merging stores W_eff and yields an ordinary Llama.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Coefficients of q_k in ascending powers of the Gram matrix G. Single source of truth.
PC_COEFFICIENTS: dict[int, tuple[float, ...]] = {
    1: (1.507, -0.507),
    2: (2.083, -1.643, 0.560),
    3: (2.909, -4.649, 4.023, -1.283),
    4: (3.625, -9.261, 14.097, -10.351, 2.890),
}
SIGMA_EPS = 1e-7
DEFAULT_TARGETS: tuple[str, ...] = (
    "*.mlp.gate_proj",
    "*.mlp.up_proj",
    "*.mlp.down_proj",
    "*.self_attn.o_proj",
)
_PC_SUFFIXES = ("pc_gamma", "pc_u", "pc_v")


def _check_degree(degree: int) -> int:
    if degree != 0 and degree not in PC_COEFFICIENTS:
        raise ValueError(f"PC degree must be in 0-4 (0 = no preconditioning), got {degree!r}")
    return int(degree)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the input dtype when it is wider (float64): never below single precision."""
    return torch.promote_types(dtype, torch.float32)


def polynomial_map(x: Tensor, degree: int) -> Tensor:
    """X q_k(G) with the Gram matrix on the smaller side (cheapest, and exact for both shapes)."""
    coeffs = PC_COEFFICIENTS.get(_check_degree(degree))
    if coeffs is None:
        return x
    tall = x.shape[-2] >= x.shape[-1]
    gram = x.mT @ x if tall else x @ x.mT
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    q = coeffs[-1] * gram + coeffs[-2] * eye  # Horner: q = c_{k-1} I + G (c_k I), then fold in the rest
    for c in reversed(coeffs[:-2]):
        q = gram @ q + c * eye
    return x @ q if tall else q @ x


def precondition(weight: Tensor, degree: int, sigma: Tensor | float) -> Tensor:
    """sigma * X q_k(G) with X = weight / sigma: the transform without gamma, for analysis and tests."""
    return sigma * polynomial_map(weight / sigma, degree)


def spectral_norm_estimate(weight: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """u^T W v + eps; differentiable in W so the normalisation inside X carries gradient."""
    return u.to(weight.dtype) @ (weight @ v.to(weight.dtype)) + SIGMA_EPS


@torch.no_grad()
def power_iteration_(weight: Tensor, u: Tensor, v: Tensor, iters: int) -> None:
    """Warm-started power iteration, in place on u, v; float32+ so the estimate is not bf16-noisy."""
    w = weight.detach().to(_compute_dtype(weight.dtype))
    uu, vv = u.to(w.dtype), v.to(w.dtype)
    for _ in range(iters):
        vv = F.normalize(w.mT @ uu, dim=0)
        uu = F.normalize(w @ vv, dim=0)
    u.copy_(uu)
    v.copy_(vv)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def effective_weight(weight: Tensor, gamma: Tensor, u: Tensor, v: Tensor, degree: int) -> Tensor:
    """gamma * stopgrad(sigma) * X q_k(G), always computed in float32 (float64 for float64 weights).

    Why not in bf16 under autocast: the polynomial's large alternating coefficients (e.g. +14.1 G^2
    - 10.4 G^3 at degree 4) cancel catastrophically with bf16's 8-bit mantissa, destroying the
    singular-value map, and sigma / the normalisation need float32 range. Autocast is therefore disabled
    here and the result is cast back to weight.dtype. Merging calls this same function, so merged weights
    equal the weights used in training exactly.
    """
    with _autocast_off(weight.device.type):
        dtype = _compute_dtype(weight.dtype)
        w = weight.to(dtype)
        sigma = spectral_norm_estimate(w, u, v)
        out = gamma.to(dtype) * sigma.detach() * polynomial_map(w / sigma, degree)
    return out.to(weight.dtype)


def _random_unit(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    vec = torch.randn(n, generator=generator, dtype=torch.float64)  # on the generator's (CPU) device
    return F.normalize(vec, dim=0).to(device=like.device, dtype=_compute_dtype(like.dtype))


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
        self.degree = _check_degree(degree)
        self.power_iters = int(power_iters)
        self.pc_gamma = nn.Parameter(torch.ones(1, dtype=weight.dtype, device=weight.device))
        self.register_buffer("pc_u", _random_unit(self.out_features, generator, weight))
        self.register_buffer("pc_v", _random_unit(self.in_features, generator, weight))
        # Set between begin_step and finish_step: W_eff shared by all micro-batches of one step.
        self.step_weight: Tensor | None = None

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

    def begin_step(self, weight: Tensor | None = None) -> None:
        """Compute W_eff once for the coming optimizer step (or take ``weight``, W_eff computed by
        another rank), as a leaf that collects the micro-batches' gradients; the transform's own graph
        is not kept (it is recomputed once in :meth:`finish_step`)."""
        with torch.no_grad():
            self.step_weight = (self.effective_weight() if weight is None else weight).requires_grad_(True)

    def finish_step(self) -> None:
        """Back-propagate the accumulated dL/dW_eff through the transform once, into weight and gamma."""
        leaf, self.step_weight = self.step_weight, None
        if leaf is not None and leaf.grad is not None:
            self.effective_weight().backward(leaf.grad)

    def update_spectral_estimate(self, weight: Tensor | None = None) -> None:
        """Warm-started power iteration on ``weight`` (the whole matrix when ``self.weight`` is sharded)."""
        power_iteration_(self.weight if weight is None else weight, self.pc_u, self.pc_v, self.power_iters)

    @torch.no_grad()
    def sigma(self) -> float:
        w = self.weight.detach()
        return float(spectral_norm_estimate(w.to(_compute_dtype(w.dtype)), self.pc_u, self.pc_v))

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
    if _check_degree(degree) == 0:
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


def begin_step(model: nn.Module) -> None:
    """Start an optimizer step on the per-step path: every PC layer computes W_eff once."""
    for _, mod in pc_modules(model):
        mod.begin_step()


def finish_step(model: nn.Module) -> None:
    """End the step: one backward through each transform; later forwards recompute W_eff again."""
    for _, mod in pc_modules(model):
        mod.finish_step()


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
    _check_degree(degree)
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
