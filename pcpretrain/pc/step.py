"""The per-step PC phases the Trainer calls: W_eff once per optimizer step, one backward, power iteration.

Recomputing every PC layer's polynomial in each micro-batch forward (and differentiating it in each
backward) costs more than the model's own matmuls for the 1B shapes. Here, per optimizer step:

- :meth:`PCStep.begin` computes W_eff for all layers before the first micro-batch;
- the micro-batches accumulate dL/dW_eff (in float32, see :meth:`PCLinear.begin_step`);
- :meth:`PCStep.finish` sums it over ranks and pushes it through the transform once, in closed form,
  into the raw weights' and gammas' ``.grad``;
- :meth:`PCStep.update_spectral` runs the power iteration after the optimizer step.

The Gram matrix of each raw weight (on its smaller side) is the one large product the three phases
share: the power iteration computes it for the new weights and iterates on it, then scales it once into
the Gram matrix of X = W / sigma, from which ``begin`` of the next step builds W_eff and ``finish``
differentiates. It is kept from one phase to the next while the weights stay unchanged (their version
counters say so), and dropped after ``finish``: one float32 n x n matrix per PC layer while the step
runs. Where stacking the weights is a local copy (one process, DDP), the power iteration's stack is
kept for ``begin`` too, so the weights are stacked twice per step, not three times; it is released
before the micro-batches.

All three work on stacks of same-shaped layers (:mod:`pcpretrain.pc.groups`), so kernel launches
depend on the number of shapes, not layers. With several ranks each stack is split into contiguous
slices: rank ``r`` computes its slice from the whole (gathered, where the engine shards) weights and
shares the result with one collective per rank and stack. Every rank ends up with identical W_eff,
u and v; each gets its own shard of the gradients where the engine shards parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pcpretrain.compat import local_shard
from pcpretrain.pc.groups import full_shape, shape_groups, stack_buffers, unstack_into
from pcpretrain.pc.layers import PCLinear, pc_modules
from pcpretrain.pc.polynomial import smaller_gram
from pcpretrain.pc.precision import autocast_off, compute_dtype, cuda_tf32
from pcpretrain.pc.spectral import power_iteration_, power_iteration_with_gram_, spectral_norm_estimate
from pcpretrain.pc.transform import effective_weight, effective_weight_vjp, normalize_gram_
from pcpretrain.sharding import (
    as_shard_of,
    broadcast_slices,
    full_stack,
    gathered,
    local_like,
    own_slice_stack,
    rank_and_world,
    reduce_slices,
    rows_sharded,
    shards_of_own_slice,
    slice_bounds,
    stacks_locally,
)


def ddp_ignored_names(model: nn.Module) -> list[str]:
    """Parameters that reach the loss only through W_eff: their gradients come after DDP's backward."""
    return [f"{name}.{leaf}" for name, _ in pc_modules(model) for leaf in ("weight", "pc_gamma")]


def _add_grad(param: Tensor, grad: Tensor) -> None:
    """Add ``grad`` (the whole tensor's) to ``param.grad``: this rank's shard of it where it is sharded."""
    _accumulate(param, local_like(param, _like(param, grad)))


def _add_grad_shard(param: Tensor, shard: Tensor) -> None:
    """Add ``shard``, this rank's shard of the gradient of the row-sharded ``param``, to ``param.grad``."""
    _accumulate(param, as_shard_of(param, _like(param, shard)))


def _like(param: Tensor, grad: Tensor) -> Tensor:
    """``grad`` in ``param``'s dtype; no op at all when it already is (one per layer would add up)."""
    return grad if grad.dtype == param.dtype else grad.to(param.dtype)


def _accumulate(param: Tensor, grad: Tensor) -> None:
    param.grad = grad if param.grad is None else param.grad.add_(grad)


def _with_gram(weights: Tensor) -> tuple[Tensor, Tensor]:
    """The weights in the transform's dtype and their own Gram matrices on the smaller side (autocast off)."""
    with autocast_off(weights.device.type):
        w = weights.to(compute_dtype(weights.dtype))
        return w, smaller_gram(w)


def _x_gram_and_sigma(w: Tensor, gram: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """sigma = u^T W v, and W's Gram matrix ``gram`` turned in place into that of X = W / sigma: what
    ``begin`` and ``finish`` take, from the weights in the transform's dtype."""
    with autocast_off(w.device.type):
        sigma = spectral_norm_estimate(w, u, v)
    return normalize_gram_(gram, sigma), sigma


class _Group:
    """One stack of same-shaped PC layers and this rank's slice of it."""

    def __init__(self, modules: list[PCLinear], rank: int, world: int) -> None:
        self.modules = modules
        self.rank, self.world = rank, world
        self.bounds = slice_bounds(len(modules), world)
        self.start, self.end = self.bounds[rank]
        self.grad_sum: Tensor | None = None
        self.sigma: Tensor | None = None
        # This rank's slice, kept from one phase to the next (see the module docstring): the Gram
        # matrices of X = W / sigma, the sigma estimates, the stacked weights (from the power iteration to
        # the next begin only, where stacking them is a local copy), and the weights' version counters
        # they were computed at.
        self._gram: tuple[Tensor, Tensor] | None = None
        self._stack: Tensor | None = None
        self._kept_versions: tuple[int, ...] = ()

    @property
    def owns_any(self) -> bool:
        return self.end > self.start

    @property
    def owns_all(self) -> bool:
        return self.end - self.start == len(self.modules)

    def weights(self, dtype: torch.dtype | None = None) -> Tensor:
        """Whole raw weights of this rank's slice (collective where the engine shards them): the kept stack
        once if the weights have not changed since, else a new one, in ``dtype`` (default: theirs)."""
        stack, self._stack = self._stack, None
        if stack is not None and self._kept_versions == self._versions() and dtype in (None, stack.dtype):
            return stack
        return own_slice_stack([mod.weight for mod in self.modules], self.rank, self.world, dtype)

    def gammas(self) -> Tensor:
        return own_slice_stack([mod.pc_gamma for mod in self.modules], self.rank, self.world)

    def buffers(self) -> tuple[Tensor, Tensor]:
        return stack_buffers(self.modules, "pc_u"), stack_buffers(self.modules, "pc_v")

    def _versions(self) -> tuple[int, ...]:
        """In-place changes seen by the weights: of the parameter and, for a DTensor, of the local shard
        the optimizer may update directly."""
        return tuple(
            v for mod in self.modules for v in (mod.weight._version, local_shard(mod.weight)._version)
        )

    def keep(self, gram: Tensor, sigma: Tensor, weights: Tensor | None = None) -> None:
        """Keep the slice's Gram matrices of X and sigmas for the next phases, and ``weights`` (its
        stacked weights) for the next :meth:`weights` where stacking them gathers nothing; valid while
        the weights stay."""
        self._gram, self._kept_versions = (gram, sigma), self._versions()
        self._stack = weights if stacks_locally(self.modules[0].weight) else None

    def keeps_gram(self) -> bool:
        """Whether the slice's Gram matrices and sigmas are kept and still valid for the weights."""
        return self._gram is not None and self._kept_versions == self._versions()

    def gram_and_sigma(self, weights: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The slice's Gram matrices of X = W / sigma and sigmas: the kept ones if the weights have not
        changed since."""
        if self.keeps_gram():
            return self._gram
        return _x_gram_and_sigma(*_with_gram(weights), u, v)

    def drop_gram(self) -> None:
        self._gram = None

    def stack_like(self, dtype: torch.dtype) -> Tensor:
        first = self.modules[0]
        shape = (len(self.modules), *full_shape(first.weight))
        return torch.empty(shape, dtype=dtype, device=first.pc_u.device)


class PCStep:
    """The PC phases of one optimizer step, for every PC layer of ``model`` (the unwrapped model).

    ``per_step=False`` keeps W_eff in every forward (the reference way); the power iteration still runs
    here. ``forward_dtype``: the dtype the forward's matmuls run in (bf16 under autocast), in which W_eff
    is kept; ``None`` keeps the weights' dtype. ``tf32``: whether the transform's float32 matmuls may
    use TF32 on CUDA (``pc.tf32``). ``product_dtype``: the dtype of the per-step transform's products
    with the large matrices (bf16 for ``pc.bf16_products``; ``None`` keeps float32). ``split=False``
    does all the work in this process, for models that are not (yet) shared with other ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        per_step: bool = True,
        forward_dtype: torch.dtype | None = None,
        tf32: bool = True,
        product_dtype: torch.dtype | None = None,
        split: bool = True,
    ) -> None:
        rank, world = rank_and_world() if split else (0, 1)
        self.groups = [_Group(g, rank, world) for g in shape_groups([m for _, m in pc_modules(model)])]
        self.per_step = per_step and bool(self.groups)
        self.forward_dtype = forward_dtype
        self.world = world
        self.tf32 = tf32
        self.product_dtype = product_dtype
        for _, layer in pc_modules(model):  # the per-forward transform honours pc.tf32 too
            layer.tf32 = tf32

    def begin(self) -> None:
        """Compute every layer's W_eff for the coming step; micro-batches then share it."""
        if self.per_step:
            self._for_each_group(self._begin_group)

    def finish(self) -> None:
        """One backward through every transform: the summed dL/dW_eff into the weights' and gammas'
        ``.grad`` (this rank's shard of them where the engine shards parameters)."""
        if self.per_step:
            self._for_each_group(self._finish_group)

    def update_spectral(self) -> None:
        """Warm-started power iteration of every PC layer, after each optimizer step (not per forward)."""
        self._for_each_group(self._update_spectral_group)

    @torch.no_grad()
    def _for_each_group(self, phase: Callable[[_Group], None]) -> None:
        with cuda_tf32(self.tf32):
            for group in self.groups:
                phase(group)

    def _begin_group(self, group: _Group) -> None:
        first = group.modules[0]
        dtype = self.forward_dtype or first.weight.dtype
        weights, gammas = group.weights(), group.gammas()  # collectives every rank joins when sharded
        mine = None
        if group.owns_any:
            u, v = group.buffers()
            rows = slice(group.start, group.end)
            gram, sigma = group.gram_and_sigma(weights, u[rows], v[rows])
            mine = effective_weight(
                weights,
                gammas,
                u[rows],
                v[rows],
                first.degree,
                gram=gram,
                sigma=sigma,
                product_dtype=self.product_dtype,
                out_dtype=dtype,
            )
            group.keep(gram, sigma)
        # With nothing to share, this rank's result is the stack (no copy into one of its own).
        stack = mine if group.owns_all else group.stack_like(dtype)
        if mine is not None and stack is not mine:
            stack[group.start : group.end] = mine
        del weights
        broadcast_slices(stack, group.bounds)
        group.grad_sum = torch.empty_like(stack, dtype=compute_dtype(dtype))
        for mod, weight, grad_sum in zip(group.modules, stack, group.grad_sum, strict=True):
            mod.begin_step(weight, grad_sum)

    def finish_through(self, backward: Callable[[Tensor], None]) -> None:
        """:meth:`finish` for engines that take gradients only from a backward pass of their own
        (DeepSpeed reduces and partitions them inside ``backward``): ``backward`` of the sum of
        <W, G> over the PC weights and gammas hands each of them exactly its gradient G."""
        if not self.per_step:
            return
        with cuda_tf32(self.tf32), torch.no_grad():
            gradients = [self._group_gradients(group) for group in self.groups]
        params = [p for group in self.groups for mod in group.modules for p in (mod.weight, mod.pc_gamma)]
        with gathered(params):
            surrogate = sum(
                (torch.stack([mod.weight for mod in group.modules]) * grads).sum()
                + (torch.stack([mod.pc_gamma for mod in group.modules]) * grad_gammas).sum()
                for group, (grads, grad_gammas) in zip(self.groups, gradients, strict=True)
            )
            backward(surrogate)

    def _finish_group(self, group: _Group) -> None:
        first = group.modules[0]
        if not (rows_sharded(first.weight, group.world) and rows_sharded(first.pc_gamma, group.world)):
            grads, grad_gammas = self._group_gradients(group)
            for mod, grad_weight, grad_gamma in zip(group.modules, grads, grad_gammas, strict=True):
                _add_grad(mod.weight, grad_weight)
                _add_grad(mod.pc_gamma, grad_gamma)
            return
        # Each rank needs only its shard of every gradient: the owners' slices go out as shards (the
        # reverse of the weights' redistribution), not whole to every rank.
        grads, grad_gammas = self._own_gradients(group)
        rows, count = slice(group.start, group.end), len(group.modules)
        grads = shards_of_own_slice(grads[rows], first.weight, count)
        grad_gammas = shards_of_own_slice(grad_gammas[rows], first.pc_gamma, count)
        for mod, grad_weight, grad_gamma in zip(group.modules, grads, grad_gammas, strict=True):
            _add_grad_shard(mod.weight, grad_weight)
            _add_grad_shard(mod.pc_gamma, grad_gamma)

    def _group_gradients(self, group: _Group) -> tuple[Tensor, Tensor]:
        """The whole gradients of the group's weights and gammas, identical on every rank."""
        grads, grad_gammas = self._own_gradients(group)
        broadcast_slices(grads, group.bounds)
        broadcast_slices(grad_gammas, group.bounds)
        return grads, grad_gammas

    def _own_gradients(self, group: _Group) -> tuple[Tensor, Tensor]:
        """Stacks of the group's weight and gamma gradients, whole in this rank's slice of rows only."""
        for mod in group.modules:
            mod.take_step_grad()
        grads, group.grad_sum = group.grad_sum, None
        reduce_slices(grads, group.bounds)
        # With the Gram matrices and sigmas kept from begin, the weights enter only the products with
        # them: stacked straight in those products' dtype, a float32 stack and its conversion are saved.
        # (Only where stacking is local: the choice must not differ between ranks that stack together.)
        first = group.modules[0]
        narrow = self.product_dtype if stacks_locally(first.weight) and group.keeps_gram() else None
        weights, gammas = group.weights(narrow), group.gammas()  # collectives every rank joins when sharded
        grad_gammas = torch.empty((len(group.modules), 1), dtype=grads.dtype, device=grads.device)
        if group.owns_any:
            rows = slice(group.start, group.end)
            u, v = group.buffers()
            gram, sigma = group.gram_and_sigma(weights, u[rows], v[rows])
            grad_weight, grad_gamma = effective_weight_vjp(
                weights,
                gammas,
                u[rows],
                v[rows],
                first.degree,
                grads[rows].div_(self.world) if self.world > 1 else grads[rows],
                gram=gram,
                sigma=sigma,
                product_dtype=self.product_dtype,
                out_dtype=grads.dtype,
            )
            if group.owns_all and grad_weight.dtype == grads.dtype:
                grads = grad_weight  # this rank computed the whole stack: no copy into the old buffer
            else:
                grads[rows] = grad_weight
            grad_gammas[rows] = grad_gamma
        group.drop_gram()
        del weights
        return grads, grad_gammas

    def _update_spectral_group(self, group: _Group) -> None:
        weights = group.weights()
        u, v = group.buffers()
        sigma = torch.empty(len(group.modules), dtype=u.dtype, device=u.device)
        if group.owns_any:
            rows = slice(group.start, group.end)
            iters = group.modules[0].power_iters
            if self.per_step:
                w, gram = _with_gram(weights)
                with autocast_off(w.device.type):
                    sigma[rows] = power_iteration_with_gram_(w, gram, u[rows], v[rows], iters)
                group.keep(normalize_gram_(gram, sigma[rows]), sigma[rows], w)
            else:
                power_iteration_(weights, u[rows], v[rows], iters)
                sigma[rows] = spectral_norm_estimate(weights.to(u.dtype), u[rows], v[rows])
        del weights
        for stack in (u, v, sigma):
            broadcast_slices(stack, group.bounds)
        unstack_into(u, group.modules, "pc_u")
        unstack_into(v, group.modules, "pc_v")
        group.sigma = sigma

    @torch.no_grad()
    def statistics(self) -> dict[str, Tensor]:
        """Gamma and sigma summaries as device scalars (the trainer reads all its metrics at once).

        Sigma is the estimate of the last :meth:`update_spectral`.
        """
        if not self.groups:
            return {}
        gammas = torch.cat(
            [full_stack([m.pc_gamma for m in g.modules], 0, len(g.modules)) for g in self.groups]
        )
        gammas = gammas.float().reshape(-1)
        sigmas = [g.sigma for g in self.groups if g.sigma is not None]
        stats = {"pc/gamma_mean": gammas.mean(), "pc/gamma_min": gammas.min(), "pc/gamma_max": gammas.max()}
        if sigmas:
            sigma = torch.cat(sigmas).float().to(gammas.device)
            stats.update({"pc/sigma_mean": sigma.mean(), "pc/sigma_max": sigma.max()})
        return stats
