"""Newton-Schulz sets land where they are designed to, against float64 SVDs of the same matrices."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from pcpretrain.batched_matmul import symmetric_strips
from pcpretrain.op_costs import OpCosts
from pcpretrain.optim import newton_schulz
from pcpretrain.optim.newton_schulz import (
    COEFFICIENT_SETS,
    aol_rescale,
    frobenius_normalize,
    gram_restarts,
    orthogonalize,
)

SETS = sorted(COEFFICIENT_SETS)
# Steps after which each set has settled even for singular values ~5e-4 after normalisation.
SETTLED_STEPS = {"simple": 8, "quintic": 20, "polar_express": 10, "aol": 12}


def gaussian(rows: int, cols: int, seed: int) -> Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ill_conditioned(rows: int, cols: int, seed: int = 3) -> Tensor:
    """Random singular vectors with singular values log-spaced over [1e-3, 1]."""
    k = min(rows, cols)
    u, _ = torch.linalg.qr(gaussian(rows, k, seed))
    v, _ = torch.linalg.qr(gaussian(cols, k, seed + 1))
    return (u * torch.logspace(-3, 0, k, dtype=torch.float64)) @ v.T


MATRICES = {
    "tall": lambda: gaussian(96, 48, 0),
    "wide": lambda: gaussian(48, 96, 1),
    "ill": lambda: ill_conditioned(96, 48),
}


def polar_factor(g: Tensor) -> Tensor:
    """U V^T from a float64 SVD: the exact orthogonalisation."""
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    return u @ vh


def cosine(a: Tensor, b: Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def run(g: Tensor, name: str, steps: int) -> Tensor:
    return orthogonalize(g.float(), steps=steps, coefficients=name, dtype=torch.float32).double()


@pytest.mark.parametrize("kind", ["tall", "wide"])
@pytest.mark.parametrize("name", SETS)
def test_design_steps_land_in_the_band(name: str, kind: str) -> None:
    cs = COEFFICIENT_SETS[name]
    out = run(MATRICES[kind](), name, cs.band_steps)
    s = torch.linalg.svdvals(out)
    assert cs.band[0] <= s.min() and s.max() <= cs.band[1], (s.min().item(), s.max().item())


@pytest.mark.parametrize("name", SETS)
def test_ill_conditioned_input_settles_in_the_band(name: str) -> None:
    cs = COEFFICIENT_SETS[name]
    s = torch.linalg.svdvals(run(MATRICES["ill"](), name, SETTLED_STEPS[name]))
    assert cs.band[0] <= s.min() and s.max() <= cs.band[1], (s.min().item(), s.max().item())


@pytest.mark.parametrize("kind", sorted(MATRICES))
@pytest.mark.parametrize("name", ["quintic", "polar_express"])
def test_convergent_sets_reach_the_polar_factor(name: str, kind: str) -> None:
    g = MATRICES[kind]()
    torch.testing.assert_close(run(g, name, SETTLED_STEPS[name]), polar_factor(g), rtol=0, atol=5e-5)


@pytest.mark.parametrize("kind", sorted(MATRICES))
def test_simple_points_along_the_polar_factor(kind: str) -> None:
    g = MATRICES[kind]()
    assert cosine(run(g, "simple", 5), polar_factor(g)) > 0.9


@pytest.mark.parametrize("kind", sorted(MATRICES))
def test_aol_converges_to_the_polar_factor_of_the_rescaled_input(kind: str) -> None:
    """Row rescaling changes the polar factor: the limit is polar(D G), close to but not polar(G)."""
    g = MATRICES[kind]()
    wide = g if g.shape[0] <= g.shape[1] else g.T
    rescaled, _ = aol_rescale(frobenius_normalize(wide))
    target = polar_factor(rescaled)
    target = target if g.shape[0] <= g.shape[1] else target.T
    out = run(g, "aol", SETTLED_STEPS["aol"])
    torch.testing.assert_close(out, target, rtol=0, atol=5e-5)
    assert cosine(out, polar_factor(g)) > 0.9


def test_aol_rescaling_bounds_the_spectral_norm() -> None:
    x, gram = aol_rescale(gaussian(40, 70, 5) * 1e3)
    assert torch.linalg.matrix_norm(x, ord=2) <= 1.0
    torch.testing.assert_close(gram, x @ x.T)


def test_polar_express_schedule_carries_the_safety_factor() -> None:
    cs = COEFFICIENT_SETS["polar_express"]
    a, b, c = cs.schedule[0]
    assert (a * 1.01, b * 1.01**3, c * 1.01**5) == pytest.approx(
        (8.28721201814563, -23.595886519098837, 17.300387312530933)
    )
    assert cs.triples(12)[-1] == (1.875, -1.25, 0.375)
    assert len(cs.triples(12)) == 12


@pytest.mark.parametrize("name", SETS)
def test_batched_input_equals_per_matrix_calls(name: str) -> None:
    g = torch.randn(2, 3, 20, 12, generator=torch.Generator().manual_seed(7))
    batched = orthogonalize(g, steps=5, coefficients=name, dtype=torch.float32)
    for i in range(2):
        for j in range(3):
            single = orthogonalize(g[i, j], steps=5, coefficients=name, dtype=torch.float32)
            torch.testing.assert_close(batched[i, j], single, rtol=1e-5, atol=1e-6)


def test_bfloat16_iteration_keeps_dtype_shape_and_rough_band() -> None:
    g = gaussian(64, 32, 11).float()
    out = orthogonalize(g)
    assert out.dtype == torch.float32 and out.shape == g.shape
    s = torch.linalg.svdvals(out)
    assert s.min() >= 0.6 and s.max() <= 1.25


def test_zero_matrix_stays_zero() -> None:
    for name in SETS:
        out = orthogonalize(torch.zeros(8, 5), coefficients=name, dtype=torch.float32)
        assert torch.equal(out, torch.zeros(8, 5))


def test_unknown_set_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="polar_express"):
        orthogonalize(torch.randn(4, 4), coefficients="cubic")


def test_bad_steps_and_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="steps"):
        orthogonalize(torch.randn(4, 4), steps=0)
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(4))


@pytest.mark.parametrize("shape", [(30, 100), (100, 30), (3, 24, 70), (40, 40), (40, 56)])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("name", SETS)
def test_the_gram_form_gives_the_standard_iterates_in_float64(monkeypatch, shape, steps, name) -> None:
    g = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    restarts = []
    original = newton_schulz._iterate_on_gram
    monkeypatch.setattr(newton_schulz, "_iterate_on_gram", lambda *a: restarts.append(a[-1]) or original(*a))
    standard = orthogonalize(g, steps=steps, coefficients=name, dtype=torch.float64)
    gram = orthogonalize(g, steps=steps, coefficients=name, dtype=torch.float64, method="gram")
    torch.testing.assert_close(gram, standard, rtol=0, atol=1e-10)
    assert gram.is_contiguous() and standard.is_contiguous()
    rows, cols = sorted(shape[-2:])
    assert restarts == [gram_restarts(rows, cols, steps)]


def test_the_gram_form_restarts_where_it_saves_flops_and_after_every_step_elsewhere() -> None:
    assert gram_restarts(2048, 5632, 5) == (2,)  # the 1B model's FFN matrices: iterate on the Gram matrix
    assert gram_restarts(2048, 2048, 5) == (1, 2, 3, 4)  # attention matrices: one product Z X per step
    assert gram_restarts(256, 2048, 1) == ()  # one step: nothing to save, nothing to restart
    # n = 1.5 m: a tie with whole products; with 4 strips (the default from m = 2048) every m x m
    # product costs 5/8, which moves the break-even point to n = 1.15 m.
    assert gram_restarts(2048, 3072, 5) == (2,)
    assert gram_restarts(2048, 2350, 5) == (1, 2, 3, 4)
    with symmetric_strips(1):
        assert gram_restarts(2048, 3072, 5) == (1, 2, 3, 4)


@pytest.mark.parametrize("method", ["standard", "gram"])
@pytest.mark.parametrize("shape", [(30, 100), (3, 100, 30), (40, 40)])
def test_strips_of_symmetric_products_give_the_whole_products_iterates_in_float64(method, shape) -> None:
    """Computing only the strips of R, R^2 and the polynomial updates on and above the diagonal (as
    from 2048 rows) changes nothing but rounding."""
    g = torch.randn(shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    whole = orthogonalize(g, dtype=torch.float64, method=method, coefficients="aol")
    with symmetric_strips(4, min_rows=4):
        strips = orthogonalize(g, dtype=torch.float64, method=method, coefficients="aol")
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-12)
    assert not torch.equal(strips, whole)  # the strips did run: rounding differs somewhere


@pytest.mark.parametrize("strips", [1, 4])  # whole symmetric products, and in strips as from 2048 rows
@pytest.mark.parametrize("shape", [(64, 200), (48, 64)])  # Gram form, and one product per step
def test_the_gram_form_in_bfloat16_lands_in_the_band(shape, strips) -> None:
    g = gaussian(*shape, 12).float()
    with symmetric_strips(strips, min_rows=12):
        out = orthogonalize(g, method="gram")
    assert out.dtype == torch.float32 and out.shape == g.shape
    s = torch.linalg.svdvals(out)
    assert s.min() >= 0.6 and s.max() <= 1.25
    reference = orthogonalize(g.double(), dtype=torch.float64)
    assert (out.double() - reference).norm() / reference.norm() < 0.05


def test_an_unknown_method_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="gram"):
        orthogonalize(torch.randn(4, 8), method="fast")


@pytest.mark.parametrize("method", ["standard", "gram"])
@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("shape", [(3, 40, 100), (3, 100, 40)])
def test_a_bfloat16_input_gives_the_same_bits_as_its_float32_copy_without_making_one(
    name: str, method: str, shape: tuple[int, ...]
) -> None:
    """Compiled Muon hands over its directions in bf16: the norm and the quotient are then formed in
    float32 inside the kernels, so the result is that of the float32 input, and the only passes over the
    large matrices are the norm's read and the quotient's read and write, in bf16."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).bfloat16()
    got = orthogonalize(x, coefficients=name, method=method, out_dtype=torch.bfloat16)
    expected = orthogonalize(x.float(), coefficients=name, method=method, out_dtype=torch.bfloat16)
    assert torch.equal(got, expected)
    big = torch.empty(2, 1536, 512, dtype=torch.bfloat16, device="meta")
    with OpCosts() as costs:
        orthogonalize(big, method=method, out_dtype=torch.bfloat16)
    assert "_to_copy" not in costs.bytes_by_op, costs.bytes_by_op  # no float32 copy, no conversion pass
    norm_and_quotient = costs.bytes_by_op["linalg_vector_norm"] + costs.bytes_by_op["div"]
    assert 3 * big.numel() * 2 <= norm_and_quotient < 3 * big.numel() * 2 + 1024
