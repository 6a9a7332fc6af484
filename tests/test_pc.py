"""Tests of polynomial preconditioning against independent float64 references."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from pcpretrain.pc import (
    DEFAULT_TARGETS,
    PCLinear,
    apply_pc,
    begin_step,
    effective_weight,
    finish_step,
    merge_state_dict,
    pc_modules,
    pc_statistics,
    polynomial_map,
    power_iteration_,
    precondition,
    spectral_norm_estimate,
    update_spectral_estimates,
)

# Written out again on purpose: the reference must not share the implementation's table.
REF_COEFFS = {
    0: (1.0,),
    1: (1.507, -0.507),
    2: (2.083, -1.643, 0.560),
    3: (2.909, -4.649, 4.023, -1.283),
    4: (3.625, -9.261, 14.097, -10.351, 2.890),
}
SHAPES = [(24, 10), (10, 24), (16, 16)]  # tall, wide, square
F64 = torch.float64


def ref_q_scalar(s2: torch.Tensor, degree: int) -> torch.Tensor:
    return sum(c * s2**i for i, c in enumerate(REF_COEFFS[degree]))


def ref_precondition(w: torch.Tensor, degree: int, sigma) -> torch.Tensor:
    """Explicit matrix powers of the Gram matrix on the smaller side."""
    x = w / sigma
    m, n = x.shape
    g = x.T @ x if m >= n else x @ x.T
    q = sum(c * torch.linalg.matrix_power(g, i) for i, c in enumerate(REF_COEFFS[degree]))
    return sigma * (x @ q if m >= n else q @ x)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unit(n: int, seed: int) -> torch.Tensor:
    v = rand(n, seed=seed)
    return v / v.norm()


def tiny_llama(intermediate_size: int = 128) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def expected_pc_names(n_layers: int = 2) -> list[str]:
    names = []
    for i in range(n_layers):
        names += [f"model.layers.{i}.self_attn.o_proj"]
        names += [f"model.layers.{i}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    return names


# ----------------------------------------------------------------------------- pure math


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_precondition_matches_reference(shape, degree):
    w = rand(*shape, seed=1)
    sigma = torch.linalg.matrix_norm(w, ord=2) * 1.1
    torch.testing.assert_close(
        precondition(w, degree, sigma), ref_precondition(w, degree, sigma), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        precondition(w, degree, 0.7), ref_precondition(w, degree, 0.7), rtol=1e-12, atol=1e-12
    )
    assert polynomial_map(w, degree).shape == w.shape


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
@pytest.mark.parametrize("scale", [1.0, 1.3])
def test_singular_value_map(shape, degree, scale):
    w = rand(*shape, seed=2)
    sigma = float(torch.linalg.matrix_norm(w, ord=2)) * scale
    s = torch.linalg.svdvals(w / sigma)
    expected = (sigma * s * ref_q_scalar(s**2, degree)).abs().sort().values
    got = torch.linalg.svdvals(precondition(w, degree, sigma)).sort().values
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_polynomial_flattens_spectrum():
    w = rand(32, 16, seed=3)
    s = torch.linalg.svdvals(precondition(w, 4, torch.linalg.matrix_norm(w, ord=2)))
    s0 = torch.linalg.svdvals(w)
    assert s.max() / s.min() < s0.max() / s0.min()


def test_power_iteration_converges_to_spectral_norm():
    q1, _ = torch.linalg.qr(rand(40, 40, seed=4))
    q2, _ = torch.linalg.qr(rand(24, 24, seed=5))
    s = torch.linspace(0.1, 3.0, 24, dtype=F64).flip(0)
    s[0] = 5.0
    w = q1[:, :24] @ torch.diag(s) @ q2.T
    u, v = unit(40, 6), unit(24, 7)
    power_iteration_(w, u, v, iters=60)
    torch.testing.assert_close(
        spectral_norm_estimate(w, u, v) - 1e-7, torch.tensor(5.0, dtype=F64), rtol=1e-10, atol=0
    )
    # Plain Gaussian matrix (small spectral gap), both orientations; warm start keeps it converged.
    for shape in [(48, 32), (32, 48)]:
        w = rand(*shape, seed=8)
        u, v = unit(shape[0], 9), unit(shape[1], 10)
        power_iteration_(w, u, v, iters=400)
        est = spectral_norm_estimate(w, u, v)
        torch.testing.assert_close(est, torch.linalg.matrix_norm(w, ord=2), rtol=1e-6, atol=0)
        power_iteration_(w, u, v, iters=1)
        torch.testing.assert_close(spectral_norm_estimate(w, u, v), est, rtol=1e-8, atol=0)
        torch.testing.assert_close(u.norm(), torch.tensor(1.0, dtype=F64))


def test_power_iteration_keeps_buffer_dtype_and_computes_in_float32():
    w = rand(20, 12, seed=11, dtype=torch.float32).bfloat16()
    u, v = unit(20, 1).float(), unit(12, 2).float()
    u_ref, v_ref = u.clone(), v.clone()
    power_iteration_(w, u, v, iters=5)
    power_iteration_(w.float(), u_ref, v_ref, iters=5)
    assert u.dtype == torch.float32 and v.dtype == torch.float32
    assert torch.equal(u, u_ref) and torch.equal(v, v_ref)


# ----------------------------------------------------------------------------- gradients


def _freeze_outer_sigma(out: torch.Tensor, w: torch.Tensor, u, v, sigma0: float) -> torch.Tensor:
    """Rescale so finite differences see the outer stop-gradient sigma as the constant sigma0.

    The factor is 1 at the check point and carries no gradient, so autograd's answer is unchanged,
    while the numerical Jacobian becomes that of gamma * sigma0 * P(W / sigma(W)).
    """
    return out * (sigma0 / spectral_norm_estimate(w.detach(), u, v))


def test_gradcheck_effective_weight_and_layer():
    w = rand(12, 7, seed=12).requires_grad_()
    gamma = torch.tensor([0.9], dtype=F64, requires_grad=True)
    u, v = unit(12, 13), unit(7, 14)
    power_iteration_(w, u, v, iters=20)
    s0 = float(spectral_norm_estimate(w.detach(), u, v))
    for degree in (1, 4):

        def fn(w_, g_, d=degree):
            return _freeze_outer_sigma(effective_weight(w_, g_, u, v, d), w_, u, v, s0)

        assert torch.autograd.gradcheck(fn, (w, gamma))
    gen = torch.Generator().manual_seed(0)
    tall = PCLinear.from_linear(nn.Linear(7, 12, bias=False, dtype=F64), 3, 10, gen)
    wide = PCLinear.from_linear(nn.Linear(12, 7, bias=False, dtype=F64), 2, 10, gen)
    for mod in (tall, wide):
        mod.update_spectral_estimate()
        s0 = mod.sigma()
        x = rand(5, mod.in_features, seed=15).requires_grad_()

        def fn(w_, g_, x_, mod=mod, s0=s0):
            y = torch.func.functional_call(mod, {"weight": w_, "pc_gamma": g_}, (x_,))
            return _freeze_outer_sigma(y, w_, mod.pc_u, mod.pc_v, s0)

        wp = mod.weight.detach().clone().requires_grad_()
        gp = torch.tensor([1.1], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(fn, (wp, gp, x))


def test_sigma_stop_gradient_only_in_outer_factor():
    w0 = rand(18, 10, seed=17)
    u, v = unit(18, 18), unit(10, 19)
    power_iteration_(w0, u, v, iters=30)
    r = rand(18, 10, seed=20)
    degree = 4

    def grads(variant: str):
        w = w0.clone().requires_grad_()
        g = torch.tensor([1.2], dtype=F64, requires_grad=True)
        if variant == "impl":
            out = effective_weight(w, g, u, v, degree)
        else:
            sigma = u @ w @ v + 1e-7
            inner = sigma.detach() if variant == "all_detached" else sigma
            outer = sigma if variant == "none_detached" else sigma.detach()
            out = g * outer * ref_precondition(w, degree, inner) / inner
        (out * r).sum().backward()
        return w.grad, g.grad

    gw, gg = grads("impl")
    rw, rg = grads("ref")
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gg, rg, rtol=1e-10, atol=1e-12)
    # The check is sensitive: detaching everywhere or nowhere gives a different gradient.
    assert not torch.allclose(gw, grads("all_detached")[0], rtol=1e-4)
    assert not torch.allclose(gw, grads("none_detached")[0], rtol=1e-4)


# ----------------------------------------------------------------------------- precision


def test_effective_weight_ignores_bf16_autocast():
    lin = nn.Linear(64, 128, bias=True)
    layer = PCLinear.from_linear(lin, degree=4, power_iters=10, generator=torch.Generator().manual_seed(0))
    layer.update_spectral_estimate()
    ref = layer.effective_weight()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer.effective_weight()
        y = layer(torch.randn(3, 64))
    assert got.dtype == torch.float32 and y.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    # Running the polynomial in bf16 would visibly be wrong, so the check above is meaningful.
    sigma = layer.sigma()
    bf16 = sigma * polynomial_map((layer.weight / sigma).bfloat16(), 4).float()
    assert (bf16 - ref).abs().max() > 100 * (got - ref).abs().max() + 1e-4


def test_bf16_weight_is_computed_in_float32():
    gen = torch.Generator().manual_seed(0)
    layer = PCLinear.from_linear(nn.Linear(32, 48, bias=False, dtype=torch.bfloat16), 4, 10, gen)
    layer.update_spectral_estimate()
    assert layer.pc_gamma.dtype == torch.bfloat16 and layer.pc_u.dtype == torch.float32
    ref = effective_weight(layer.weight.float(), layer.pc_gamma.float(), layer.pc_u, layer.pc_v, 4)
    got = layer.effective_weight()
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, ref.bfloat16())


# ----------------------------------------------------------------------------- model surgery


@pytest.mark.parametrize("intermediate_size", [128, 48])  # gate/up tall & down wide, then the reverse
def test_apply_pc_on_llama(intermediate_size):
    model = tiny_llama(intermediate_size)
    plain_keys = list(model.state_dict())
    weights = {n: p for n, p in model.named_parameters()}
    rng_state = torch.get_rng_state()
    names = apply_pc(model, degree=4)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    assert names == expected_pc_names()
    assert [n for n, _ in pc_modules(model)] == names
    for name, mod in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "lm_head")):
            assert type(mod) is nn.Linear
    assert type(model.model.embed_tokens) is nn.Embedding
    for name in names:
        mod = model.get_submodule(name)
        assert mod.weight is weights[f"{name}.weight"]  # same Parameter object
        assert mod.pc_u.shape == (mod.out_features,) and mod.pc_v.shape == (mod.in_features,)
    extra = {f"{n}.{s}" for n in names for s in ("pc_gamma", "pc_u", "pc_v")}
    assert set(model.state_dict()) == set(plain_keys) | extra
    assert {n for n, _ in model.named_parameters()} == set(weights) | {f"{n}.pc_gamma" for n in names}

    twin = tiny_llama(intermediate_size)
    apply_pc(twin, degree=4, seed=0)
    other = tiny_llama(intermediate_size)
    apply_pc(other, degree=4, seed=1)
    for name in names:
        a, b, c = (m.get_submodule(name) for m in (model, twin, other))
        assert torch.equal(a.pc_u, b.pc_u) and torch.equal(a.pc_v, b.pc_v)
        assert not torch.equal(a.pc_v, c.pc_v)
        assert abs(a.sigma() - b.sigma()) < 1e-7


def test_apply_pc_errors_and_degree_zero():
    model = tiny_llama()
    with pytest.raises(ValueError, match=re.escape("*.mlp.nonexistent")) as info:
        apply_pc(model, 4, targets=[*DEFAULT_TARGETS, "*.mlp.nonexistent"])
    assert "q_proj" in str(info.value)  # shows example module names
    assert pc_modules(model) == []  # nothing half-converted
    assert apply_pc(model, 0) == [] and pc_modules(model) == []
    apply_pc(model, 2)
    with pytest.raises(ValueError, match="already"):
        apply_pc(model, 2)


def test_statistics_and_updates():
    model = tiny_llama()
    assert pc_statistics(model) == {}
    apply_pc(model, 4, power_iters=50)
    update_spectral_estimates(model)
    stats = pc_statistics(model)
    assert stats["pc/gamma_mean"] == stats["pc/gamma_min"] == stats["pc/gamma_max"] == 1.0
    norms = [float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) for _, m in pc_modules(model)]
    assert stats["pc/sigma_max"] == pytest.approx(max(norms), rel=1e-3)
    assert stats["pc/sigma_mean"] == pytest.approx(sum(norms) / len(norms), rel=1e-3)


# ----------------------------------------------------------------------------- merging


@pytest.mark.parametrize("intermediate_size", [128, 48])
def test_merge_state_dict_gives_plain_llama_with_same_logits(intermediate_size):
    model = tiny_llama(intermediate_size)
    names = apply_pc(model, degree=4)
    with torch.no_grad():
        for i, name in enumerate(names):
            model.get_submodule(name).pc_gamma.fill_(0.8 + 0.05 * i)
            model.get_submodule(name).weight.mul_(1.5)  # stale estimates are fine: merge uses the same u, v
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits

    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    merged = merge_state_dict(sd, degree=4)
    assert set(sd) == set(before) and all(torch.equal(sd[k], before[k]) for k in sd)
    assert not any(k.endswith(("pc_gamma", "pc_u", "pc_v")) for k in merged)

    plain = tiny_llama(intermediate_size)
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, logits, rtol=0, atol=1e-5)
    for key in merged:
        if key.rpartition(".")[0] not in names:
            assert merged[key] is sd[key]


def test_merge_state_dict_errors():
    layer = PCLinear.from_linear(nn.Linear(8, 6), 2, 10, torch.Generator().manual_seed(0))
    sd = {f"blk.{k}": v for k, v in layer.state_dict().items()}
    assert set(merge_state_dict(sd, 2)) == {"blk.weight", "blk.bias"}
    del sd["blk.pc_u"]
    with pytest.raises(KeyError, match="blk.pc_u"):
        merge_state_dict(sd, 2)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("degree", [-1, 5, 7])
def test_degree_validation(degree):
    w = rand(6, 4, seed=0)
    for call in (
        lambda: polynomial_map(w, degree),
        lambda: precondition(w, degree, 1.0),
        lambda: apply_pc(tiny_llama(), degree),
        lambda: merge_state_dict({}, degree),
        lambda: PCLinear.from_linear(nn.Linear(4, 6), degree, 10, torch.Generator()),
    ):
        with pytest.raises(ValueError, match="0-4"):
            call()


def _accumulated_grads(model: nn.Module, micro_batches: list[torch.Tensor], per_step: bool) -> dict:
    """Gradients of the mean loss over micro-batches, with W_eff per forward or once per step."""
    model.zero_grad(set_to_none=True)
    if per_step:
        begin_step(model)
    for tokens in micro_batches:
        loss = model(input_ids=tokens, labels=tokens).loss / len(micro_batches)
        loss.backward()
    if per_step:
        finish_step(model)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_per_step_transform_gives_the_per_forward_gradients() -> None:
    model = tiny_llama().to(F64).train()
    apply_pc(model, 4)
    micro_batches = [
        torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(3)
    ]
    per_forward = _accumulated_grads(model, micro_batches, per_step=False)
    per_step = _accumulated_grads(model, micro_batches, per_step=True)
    assert per_step.keys() == per_forward.keys()
    assert any(name.endswith("pc_gamma") for name in per_step)
    for name, grad in per_forward.items():
        torch.testing.assert_close(per_step[name], grad, rtol=1e-10, atol=1e-12)
    assert all(mod.step_weight is None for _, mod in pc_modules(model))  # released after the step


def test_per_step_transform_is_computed_once_and_shared_by_micro_batches(monkeypatch) -> None:
    model = tiny_llama().train()
    apply_pc(model, 2)
    calls = []
    original = PCLinear.effective_weight
    monkeypatch.setattr(PCLinear, "effective_weight", lambda self: calls.append(1) or original(self))
    begin_step(model)
    for seed in range(4):
        tokens = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(seed))
        model(input_ids=tokens, labels=tokens).loss.backward()
    leaves = [mod.step_weight for _, mod in pc_modules(model)]
    assert all(leaf is not None and leaf.grad is not None for leaf in leaves)
    assert len(leaves) == len(calls)
    finish_step(model)
    assert len(calls) == 2 * len(pc_modules(model))  # once to begin, once to back-propagate
