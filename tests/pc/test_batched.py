"""Stacked (batched) PC maths equals the same maths applied one matrix at a time, in float64."""

from __future__ import annotations

import pytest
import torch
from pc_reference import F64, SHAPES, rand, unit

from pcpretrain.batched_matmul import symmetric_strips
from pcpretrain.op_costs import OpCosts
from pcpretrain.pc.polynomial import polynomial_map, polynomial_map_vjp, smaller_gram
from pcpretrain.pc.spectral import power_iteration_, power_iteration_with_gram_, spectral_norm_estimate
from pcpretrain.pc.transform import effective_weight, effective_weight_vjp, normalize_gram_

BATCH = 3


def stack(shape: tuple[int, int], seed: int) -> dict[str, torch.Tensor]:
    """A stack of matrices with their own gammas and unit u, v, as a shape group holds them."""
    m, n = shape
    return {
        "weight": torch.stack([rand(m, n, seed=seed + i) for i in range(BATCH)]),
        "gamma": torch.stack([torch.tensor([0.8 + 0.1 * i], dtype=F64) for i in range(BATCH)]),
        "u": torch.stack([unit(m, seed + 10 + i) for i in range(BATCH)]),
        "v": torch.stack([unit(n, seed + 20 + i) for i in range(BATCH)]),
        "grad": torch.stack([rand(m, n, seed=seed + 30 + i) for i in range(BATCH)]),
    }


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_batched_polynomial_and_its_vjp_equal_the_per_matrix_ones(shape, degree) -> None:
    s = stack(shape, seed=1)
    x, grad = s["weight"] / 4, s["grad"]
    batched = polynomial_map(x, degree)
    dx, inner, along_x = polynomial_map_vjp(x, grad, degree)
    assert inner.shape == along_x.shape == (BATCH,)
    for i in range(BATCH):
        torch.testing.assert_close(batched[i], polynomial_map(x[i], degree), rtol=1e-10, atol=1e-12)
        dx_i, inner_i, along_x_i = polynomial_map_vjp(x[i], grad[i], degree)
        torch.testing.assert_close(dx[i], dx_i, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(inner[i], inner_i, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(along_x[i], along_x_i, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_batched_effective_weight_and_vjp_equal_the_per_matrix_ones(shape, degree) -> None:
    s = stack(shape, seed=2)
    w, gamma, u, v, grad = s["weight"], s["gamma"], s["u"], s["v"], s["grad"]
    batched = effective_weight(w, gamma, u, v, degree)
    grad_w, grad_gamma = effective_weight_vjp(w, gamma, u, v, degree, grad)
    assert grad_gamma.shape == gamma.shape
    for i in range(BATCH):
        torch.testing.assert_close(
            batched[i], effective_weight(w[i], gamma[i], u[i], v[i], degree), rtol=1e-10, atol=1e-12
        )
        grad_w_i, grad_gamma_i = effective_weight_vjp(w[i], gamma[i], u[i], v[i], degree, grad[i])
        torch.testing.assert_close(grad_w[i], grad_w_i, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad_gamma[i], grad_gamma_i, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_batched_power_iteration_equals_the_per_matrix_one(shape) -> None:
    s = stack(shape, seed=3)
    u, v = s["u"].clone(), s["v"].clone()
    power_iteration_(s["weight"], u, v, iters=10)
    sigma = spectral_norm_estimate(s["weight"], u, v)
    for i in range(BATCH):
        u_i, v_i = s["u"][i].clone(), s["v"][i].clone()
        power_iteration_(s["weight"][i], u_i, v_i, iters=10)
        torch.testing.assert_close(u[i], u_i, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v[i], v_i, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            sigma[i], spectral_norm_estimate(s["weight"][i], u_i, v_i), rtol=1e-10, atol=0
        )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iters", [0, 1, 2, 10])
def test_power_iteration_from_the_gram_gives_the_same_iterates(shape, iters) -> None:
    s = stack(shape, seed=4)
    u, v = s["u"].clone(), s["v"].clone()
    power_iteration_(s["weight"], u, v, iters=iters)
    u_gram, v_gram = s["u"].clone(), s["v"].clone()
    sigma = power_iteration_with_gram_(s["weight"], smaller_gram(s["weight"]), u_gram, v_gram, iters=iters)
    torch.testing.assert_close(u_gram, u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v_gram, v, rtol=1e-10, atol=1e-12)
    assert torch.equal(sigma, spectral_norm_estimate(s["weight"], u_gram, v_gram))


@pytest.mark.parametrize("buffer_dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_gram_power_iterations_estimate_is_a_fresh_one_bit_for_bit(shape, buffer_dtype) -> None:
    """The estimate reuses the iteration's last product W v: the numbers of a separate
    ``spectral_norm_estimate`` at the new u, v, also where u, v are kept narrower than the weights."""
    s = stack(shape, seed=7)
    w = s["weight"]
    u, v = s["u"].to(buffer_dtype), s["v"].to(buffer_dtype)
    sigma = power_iteration_with_gram_(w, smaller_gram(w), u, v, iters=10)
    assert sigma.dtype == F64
    assert torch.equal(sigma, spectral_norm_estimate(w, u, v))
    # u^T W v of unit vectors never exceeds ||W||_2, and ten iterations come close to it.
    norm = torch.linalg.matrix_norm(w, ord=2)
    assert (sigma <= norm + 1e-6).all() and (sigma > 0.9 * norm).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [0, 2, 4])
def test_a_given_gram_and_sigma_give_what_the_transform_computes_itself(shape, degree) -> None:
    s = stack(shape, seed=5)
    w, gamma, u, v, grad = s["weight"], s["gamma"], s["u"], s["v"], s["grad"]
    sigma = spectral_norm_estimate(w, u, v)
    given = {"gram": normalize_gram_(smaller_gram(w), sigma), "sigma": sigma}
    torch.testing.assert_close(
        effective_weight(w, gamma, u, v, degree, **given),
        effective_weight(w, gamma, u, v, degree),
        rtol=1e-12,
        atol=1e-14,
    )
    for mine, theirs in zip(
        effective_weight_vjp(w, gamma, u, v, degree, grad, **given),
        effective_weight_vjp(w, gamma, u, v, degree, grad),
        strict=True,
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_symmetric_products_in_strips_change_only_rounding(shape, degree) -> None:
    """The Gram matrix, q(G), G^2 and Dq[S] computed strip by strip (as from 1024 rows) give the
    whole products' W_eff and gradients, with fewer FLOPs."""
    s = stack(shape, seed=6)
    w, gamma, u, v, grad = s["weight"], s["gamma"], s["u"], s["v"], s["grad"]

    def transform() -> tuple[tuple[torch.Tensor, ...], int]:
        with OpCosts() as costs:
            sigma = spectral_norm_estimate(w, u, v)
            given = {"gram": normalize_gram_(smaller_gram(w), sigma), "sigma": sigma}
            out = (
                effective_weight(w, gamma, u, v, degree, **given),
                *effective_weight_vjp(w, gamma, u, v, degree, grad, **given),
            )
        return out, costs.flops

    whole, whole_flops = transform()
    with symmetric_strips(3, min_rows=2):
        strips, strips_flops = transform()
    assert strips_flops < whole_flops
    for mine, theirs in zip(strips, whole, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
