"""Tests of the PC transform's functions against independent float64 references."""

from __future__ import annotations

import pytest
import torch
from pc_reference import F64, SHAPES, rand, ref_precondition, ref_q_scalar, unit
from torch import nn

from pcpretrain.pc import PCLinear
from pcpretrain.pc.polynomial import polynomial_map, polynomial_map_vjp, precondition, smaller_gram
from pcpretrain.pc.spectral import power_iteration_, spectral_norm_estimate
from pcpretrain.pc.transform import effective_weight, effective_weight_vjp, normalize_gram_

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


# ----------------------------------------------------------------------------- closed-form gradient


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_polynomial_map_vjp_matches_autograd(shape, degree):
    x = (rand(*shape, seed=21) / 4).requires_grad_()
    grad = rand(*shape, seed=22)
    out = polynomial_map(x, degree)
    (expected,) = torch.autograd.grad(out, x, grad)
    dx, inner, along_x = polynomial_map_vjp(x.detach(), grad, degree)
    torch.testing.assert_close(dx, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inner, (grad * out).sum().detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(along_x, (expected * x).sum().detach(), rtol=1e-12, atol=1e-12)


def _weight_gamma_u_v(shape: tuple[int, int], dtype: torch.dtype = F64):
    w = rand(*shape, seed=23)
    u, v = unit(shape[0], 24), unit(shape[1], 25)
    power_iteration_(w, u, v, iters=30)
    return w.to(dtype), torch.tensor([0.8], dtype=dtype), u.to(dtype), v.to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_effective_weight_vjp_matches_autograd(shape, degree):
    w, gamma, u, v = _weight_gamma_u_v(shape)
    grad = rand(*shape, seed=26)
    w_, gamma_ = w.clone().requires_grad_(), gamma.clone().requires_grad_()
    expected = torch.autograd.grad(effective_weight(w_, gamma_, u, v, degree), (w_, gamma_), grad)
    got = effective_weight_vjp(w, gamma, u, v, degree, grad)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_effective_weight_vjp_in_float32_is_float32_accurate():
    """The closed form in float32 (how training runs it) against the float64 one."""
    shape = (96, 40)
    w, gamma, u, v = _weight_gamma_u_v(shape)
    grad = rand(*shape, seed=27)
    ref_w, ref_gamma = effective_weight_vjp(w, gamma, u, v, 4, grad)
    got_w, got_gamma = effective_weight_vjp(w.float(), gamma.float(), u.float(), v.float(), 4, grad.float())
    assert got_w.dtype == torch.float32
    assert float((got_w.double() - ref_w).norm() / ref_w.norm()) < 1e-5
    torch.testing.assert_close(got_gamma.double(), ref_gamma, rtol=1e-5, atol=0)
    bf16_w, bf16_gamma = effective_weight_vjp(w.bfloat16(), gamma.bfloat16(), u.float(), v.float(), 4, grad)
    assert bf16_w.dtype == torch.bfloat16 and bf16_gamma.dtype == torch.bfloat16


@pytest.mark.parametrize("shape", SHAPES)
def test_closed_form_gradients_are_contiguous(shape):
    """Collectives send the raw buffer: a transposed-strided gradient would arrive scrambled."""
    w, gamma, u, v = _weight_gamma_u_v(shape)
    grad_weight, grad_gamma = effective_weight_vjp(w, gamma, u, v, 2, rand(*shape, seed=28))
    assert grad_weight.is_contiguous() and grad_gamma.is_contiguous()


@pytest.mark.parametrize("shape", [(160, 64), (64, 160), (96, 96)])
@pytest.mark.parametrize("degree", [2, 4])
def test_bf16_products_stay_at_bf16_level_accuracy(shape, degree):
    """pc.bf16_products runs only the products with the large matrix in bf16: W_eff and dL/dW within a
    few bf16 roundings (2^-9 = 2e-3) of float64, far from the float32 path's 1e-6 (so bf16 did run)."""
    m, n = shape
    weight = 0.02 * rand(m, n, seed=1)
    grad = rand(m, n, seed=2)
    u, v = unit(m, 3), unit(n, 4)
    power_iteration_(weight, u, v, iters=30)
    gamma = torch.tensor([0.9], dtype=F64)
    ref_weight = effective_weight(weight, gamma, u, v, degree)
    ref_grad, ref_gamma = effective_weight_vjp(weight, gamma, u, v, degree, grad)
    args = [t.float() for t in (weight, gamma, u, v)]
    w_eff = effective_weight(*args, degree, product_dtype=torch.bfloat16, out_dtype=torch.bfloat16)
    grad_w, grad_gamma = effective_weight_vjp(*args, degree, grad.float(), product_dtype=torch.bfloat16)
    assert w_eff.dtype == torch.bfloat16 and grad_w.dtype == torch.float32
    for got, ref in ((w_eff, ref_weight), (grad_w, ref_grad)):
        err = float((got.double() - ref).norm() / ref.norm())
        assert 5e-4 < err < 1e-2, err
    torch.testing.assert_close(grad_gamma.double(), ref_gamma, rtol=2e-2, atol=0)


@pytest.mark.parametrize("shape", [(160, 64), (64, 160)])
def test_weights_given_in_the_products_dtype_give_the_same_gradients_bitwise(shape):
    """With the Gram matrix and sigma given, W enters the backward only through the bf16 products, so
    weights handed over in bf16 (stacked so by the caller) change nothing but the work."""
    m, n = shape
    weight = (0.02 * rand(3, m, n, seed=5)).float()
    u, v = unit(m, 6).float().expand(3, m).clone(), unit(n, 7).float().expand(3, n).clone()
    power_iteration_(weight, u, v, iters=5)
    gamma, grad = torch.full((3, 1), 0.9), rand(3, m, n, seed=8).float()
    sigma = spectral_norm_estimate(weight, u, v)
    given = {"gram": normalize_gram_(smaller_gram(weight), sigma), "sigma": sigma}
    bf16 = torch.bfloat16
    expected = effective_weight_vjp(weight, gamma, u, v, 4, grad, **given, product_dtype=bf16)
    got = effective_weight_vjp(
        weight.to(bf16), gamma, u, v, 4, grad, **given, product_dtype=bf16, out_dtype=torch.float32
    )
    assert got[0].dtype == torch.float32
    for mine, theirs in zip(got, expected, strict=True):
        assert torch.equal(mine, theirs)
