"""Muon steps against independent float64 recomputations, one matrix at a time; AdamW against torch's."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import Tensor, nn

from pcpretrain.op_costs import OpCosts
from pcpretrain.optim.muon import LR_ADJUSTMENTS, NS_DTYPES, Muon, adjusted_lr
from pcpretrain.optim.newton_schulz import COEFFICIENT_SETS, orthogonalize

LR, MUON_WD, MOMENTUM = 0.05, 0.1, 0.95
ADAM_LR, ADAM_WD, BETAS, EPS = 3e-3, 0.05, (0.9, 0.95), 1e-8


class Tiny(nn.Module):
    """Two linear layers, a 3-D weight (flattened by Muon) and an embedding-like AdamW matrix."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 8))
        self.kernel = nn.Parameter(torch.randn(6, 4, 5) * 0.1)
        self.table = nn.Parameter(torch.randn(10, 12) * 0.1)

    def muon_params(self) -> dict[str, nn.Parameter]:
        return {
            "body.0.weight": self.body[0].weight,
            "body.2.weight": self.body[2].weight,
            "kernel": self.kernel,
        }

    def adam_params(self) -> dict[str, nn.Parameter]:
        return {"body.0.bias": self.body[0].bias, "body.2.bias": self.body[2].bias, "table": self.table}


def make_optimizer(model: Tiny, **muon: object) -> Muon:
    groups = [
        {"params": list(model.muon_params().values()), "names": list(model.muon_params()), "use_muon": True},
        {
            "params": list(model.adam_params().values()),
            "use_muon": False,
            "lr": ADAM_LR,
            "weight_decay": ADAM_WD,
        },
    ]
    defaults = dict(lr=LR, weight_decay=MUON_WD, momentum=MOMENTUM, ns_dtype="float32", betas=BETAS, eps=EPS)
    defaults.update(muon)
    return Muon(groups, **defaults)


def fixed_grads(model: nn.Module, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=gen) for name, p in model.named_parameters()}


def set_grads(model: nn.Module, grads: dict[str, Tensor]) -> None:
    for name, p in model.named_parameters():
        p.grad = grads[name].clone()


def reference_ns(m: Tensor, steps: int = 5) -> Tensor:
    """The Muon reference quintic in float64, written out as a polynomial in X X^T."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = m.double()
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if transposed else x


def reference_muon(weight: Tensor, grads: list[Tensor]) -> Tensor:
    """Nesterov momentum, decoupled weight decay and moonlight scaling, step by step in float64."""
    w, buf = weight.double().clone(), torch.zeros_like(weight, dtype=torch.float64)
    rows, cols = weight.shape[0], math.prod(weight.shape[1:])
    scale = LR * 0.2 * math.sqrt(max(rows, cols))
    for g in grads:
        buf = MOMENTUM * buf + g.double()
        update = g.double() + MOMENTUM * buf
        ortho = reference_ns(update.reshape(rows, cols)).reshape(weight.shape)
        w = w * (1 - LR * MUON_WD) - scale * ortho
    return w


def test_two_steps_match_an_independent_float64_recomputation() -> None:
    model = Tiny()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = make_optimizer(model)
    grads = [fixed_grads(model, 1), fixed_grads(model, 2)]
    for g in grads:
        set_grads(model, g)
        opt.step()
    for name, p in model.muon_params().items():
        expected = reference_muon(start[name], [g[name] for g in grads])
        torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-5)
        assert not torch.allclose(p.detach(), start[name], atol=1e-3)


def test_adamw_groups_match_torch_adamw() -> None:
    model, twin = Tiny(), Tiny()
    opt = make_optimizer(model)
    reference = torch.optim.AdamW(
        list(twin.adam_params().values()),
        lr=ADAM_LR,
        betas=BETAS,
        eps=EPS,
        weight_decay=ADAM_WD,
        foreach=False,
    )
    for seed in (1, 2, 3):
        grads = fixed_grads(model, seed)
        set_grads(model, grads)
        set_grads(twin, grads)
        opt.step()
        reference.step()
    for name, p in model.adam_params().items():
        torch.testing.assert_close(p, twin.adam_params()[name], rtol=1e-6, atol=1e-7)
        state, ref_state = opt.state[p], reference.state[twin.adam_params()[name]]
        torch.testing.assert_close(state["exp_avg_sq"], ref_state["exp_avg_sq"], rtol=1e-6, atol=0)
        assert float(state["step"]) == float(ref_state["step"]) == 3.0


def test_adjusted_lr_on_the_1b_ffn_shape() -> None:
    lr = 1.5e-3
    assert adjusted_lr(lr, (2048, 5632), "moonlight") == pytest.approx(lr * 0.2 * math.sqrt(5632))
    assert adjusted_lr(lr, (2048, 5632), "moonlight") == pytest.approx(0.0225141, rel=1e-5)
    assert adjusted_lr(lr, (2048, 5632), "spectral_mup") == pytest.approx(lr * math.sqrt(2048 / 5632))
    assert adjusted_lr(lr, (2048, 5632), "original") == pytest.approx(lr)
    assert adjusted_lr(lr, (5632, 2048), "original") == pytest.approx(lr * math.sqrt(5632 / 2048))
    assert adjusted_lr(lr, (4, 3, 5), "spectral_mup") == pytest.approx(lr * math.sqrt(4 / 15))
    with pytest.raises(ValueError, match="moonlight"):
        adjusted_lr(lr, (4, 4), "mup")
    assert LR_ADJUSTMENTS == ("moonlight", "spectral_mup", "original")


def test_state_dict_round_trip_resumes_bit_identically() -> None:
    straight = Tiny()
    opt = make_optimizer(straight)
    set_grads(straight, fixed_grads(straight, 1))
    opt.step()

    resumed = copy.deepcopy(straight)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt_resumed = make_optimizer(resumed, lr=123.0)  # the loaded groups must override this
    opt_resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt_resumed.param_groups[0]["lr"] == LR

    grads = fixed_grads(straight, 2)
    for model, optimizer in ((straight, opt), (resumed, opt_resumed)):
        set_grads(model, grads)
        optimizer.step()
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_state_layout() -> None:
    model = Tiny()
    opt = make_optimizer(model)
    set_grads(model, fixed_grads(model, 1))
    opt.step()
    for p in model.muon_params().values():
        assert set(opt.state[p]) == {"momentum_buffer"}
        assert opt.state[p]["momentum_buffer"].dtype == torch.float32
    for p in model.adam_params().values():
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
        assert isinstance(opt.state[p]["step"], Tensor)


@pytest.mark.parametrize("coefficients", ["quintic", "polar_express", "aol"])
def test_other_sets_and_bfloat16_iteration_take_finite_steps(coefficients: str) -> None:
    model = Tiny()
    opt = make_optimizer(model, coefficients=coefficients, ns_dtype="bfloat16", nesterov=False)
    set_grads(model, fixed_grads(model, 1))
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_params_without_grad_are_skipped() -> None:
    model = Tiny()
    opt = make_optimizer(model)
    before = model.kernel.detach().clone()
    opt.step()
    assert torch.equal(model.kernel, before) and not opt.state


def test_vector_in_a_muon_group_is_named() -> None:
    model = Tiny()
    groups = [{"params": [model.body[0].bias], "names": ["body.0.bias"], "use_muon": True}]
    with pytest.raises(ValueError, match=r"body\.0\.bias"):
        Muon(groups)
    with pytest.raises(ValueError, match=r"body\.0\.bias"):
        Muon([{"params": [("body.0.bias", model.body[0].bias)], "use_muon": True}])


def test_groups_must_declare_their_rule_and_valid_options() -> None:
    model = Tiny()
    with pytest.raises(ValueError, match="use_muon"):
        Muon(model.parameters())
    weight = [model.body[0].weight]
    for bad in (
        {"lr_adjust": "mup"},
        {"ns_dtype": "float16"},
        {"coefficients": "cubic"},
        {"ns_steps": 0},
        {"ns_method": "x"},
    ):
        with pytest.raises(ValueError):
            Muon([{"params": weight, "use_muon": True, **bad}])


# Several matrices of each shape (tall, wide, square, conv-like 3-D, a single row), in two Muon groups
# with different settings; "tall1" never gets a gradient. The batches are cut by shape, not by group
# order, so the matrices of one shape are deliberately not adjacent.
MIXED_A = {
    "tall0": (40, 24),
    "wide0": (16, 40),
    "tall1": (40, 24),
    "conv0": (6, 4, 5),
    "tall2": (40, 24),
    "wide1": (16, 40),
    "conv1": (6, 4, 5),
}
MIXED_B = {"square0": (24, 24), "row": (1, 16), "square1": (24, 24)}
GROUP_B = {"lr": 0.03, "weight_decay": 0.0, "momentum": 0.9, "ns_steps": 7, "lr_adjust": "spectral_mup"}


@pytest.fixture
def float64_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Newton–Schulz in float64 (tests only), so batching is compared with no rounding of its own."""
    monkeypatch.setitem(NS_DTYPES, "float64", torch.float64)


def per_matrix_reference(start: Tensor, grads: list[Tensor], group: dict) -> Tensor:
    """The documented rule, one matrix at a time: momentum, (Nesterov) direction, Newton–Schulz of the
    direction as a (rows, prod(rest)) matrix, decoupled weight decay, step scaled by the adjusted lr."""
    lr, momentum = group["lr"], group["momentum"]
    rows, cols = start.shape[0], math.prod(start.shape[1:])
    weight, buf = start.clone(), torch.zeros_like(start)
    for grad in grads:
        buf = momentum * buf + grad
        direction = grad + momentum * buf if group["nesterov"] else buf
        ortho = orthogonalize(
            direction.reshape(rows, cols),
            steps=group["ns_steps"],
            coefficients=group["coefficients"],
            dtype=torch.float64,
        ).reshape(start.shape)
        step = adjusted_lr(lr, start.shape, group["lr_adjust"])
        weight = weight * (1.0 - lr * group["weight_decay"]) - step * ortho
    return weight


@pytest.mark.usefixtures("float64_iteration")
@pytest.mark.parametrize("ns_method", ["standard", "gram"])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("coefficients", sorted(COEFFICIENT_SETS))
def test_batched_steps_equal_a_per_matrix_reference_in_float64(
    coefficients: str, nesterov: bool, ns_method: str
) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = {**MIXED_A, **MIXED_B}
    start = {name: torch.randn(shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}
    params = {name: nn.Parameter(t.clone()) for name, t in start.items()}
    opt = Muon(
        [
            {"params": [params[n] for n in MIXED_A], "use_muon": True},
            {"params": [params[n] for n in MIXED_B], "use_muon": True, **GROUP_B},
        ],
        lr=LR,
        weight_decay=MUON_WD,
        momentum=MOMENTUM,
        nesterov=nesterov,
        coefficients=coefficients,
        ns_dtype="float64",
        ns_method=ns_method,
    )
    grads = [
        {n: torch.randn(shape, generator=gen, dtype=torch.float64) for n, shape in shapes.items()}
        for _ in range(3)
    ]
    for step_grads in grads:
        for name, p in params.items():
            p.grad = None if name == "tall1" else step_grads[name].clone()
        opt.step()

    assert torch.equal(params["tall1"], start["tall1"]) and params["tall1"] not in opt.state
    for group, names in zip(opt.param_groups, (MIXED_A, MIXED_B), strict=True):
        for name in names:
            if name == "tall1":
                continue
            expected = per_matrix_reference(start[name], [g[name] for g in grads], group)
            torch.testing.assert_close(params[name].detach(), expected, rtol=0, atol=1e-10, msg=name)
            assert set(opt.state[params[name]]) == {"momentum_buffer"}


def test_adamw_groups_are_bit_identical_to_torch_fused_adamw() -> None:
    """Batched over mixed shapes, with one parameter skipping a step so the step counts differ."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(10, 12), (12,), (3, 4, 5), (7,)]
    params = [nn.Parameter(torch.randn(shape, generator=gen)) for shape in shapes]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    settings = dict(lr=ADAM_LR, betas=BETAS, eps=EPS, weight_decay=ADAM_WD)
    opt = Muon([{"params": params, "use_muon": False}], **settings)
    reference = torch.optim.AdamW(twins, fused=True, **settings)
    for step in range(4):
        for index, (p, twin) in enumerate(zip(params, twins, strict=True)):
            grad = torch.randn(p.shape, generator=gen)
            p.grad, twin.grad = (None, None) if (step, index) == (1, 1) else (grad, grad.clone())
        opt.step()
        reference.step()
    for p, twin in zip(params, twins, strict=True):
        assert torch.equal(p, twin)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], reference.state[twin][key]), key
    assert [float(opt.state[p]["step"]) for p in params] == [4.0, 3.0, 4.0, 4.0]


def test_a_step_flagged_by_found_inf_changes_nothing_and_an_unflagged_one_is_a_plain_step() -> None:
    """``found_inf`` (as torch's fused optimizers read it) skips the step on the device, NaN gradients
    and all; with 0 the step is the one taken without the flag."""
    flagged, plain = Tiny(), Tiny()
    flagged_opt, plain_opt = make_optimizer(flagged), make_optimizer(plain)
    for seed in (1, 2):  # two real steps first, so every state exists and is non-trivial
        for model, opt in ((flagged, flagged_opt), (plain, plain_opt)):
            set_grads(model, fixed_grads(model, seed))
            opt.found_inf = torch.tensor(0.0) if opt is flagged_opt else None
            opt.step()
    for name, p in flagged.named_parameters():
        torch.testing.assert_close(p, dict(plain.named_parameters())[name], rtol=1e-6, atol=1e-7)

    before = {name: p.detach().clone() for name, p in flagged.named_parameters()}
    states = {
        name: {k: v.clone() for k, v in flagged_opt.state[p].items()}
        for name, p in flagged.named_parameters()
    }
    set_grads(
        flagged, {name: torch.full(g.shape, float("nan")) for name, g in fixed_grads(flagged, 3).items()}
    )
    flagged_opt.found_inf = torch.tensor(1.0)
    flagged_opt.step()
    for name, p in flagged.named_parameters():
        assert torch.equal(p, before[name]), name
        for key, value in flagged_opt.state[p].items():
            assert torch.equal(value, states[name][key]), (name, key)


@pytest.mark.parametrize("method", ["standard", "gram"])
def test_a_step_does_newton_schulz_products_and_no_others(method: str) -> None:
    """FLOPs of one step at the 1B model's shapes, counted on meta tensors, against the closed forms
    (m <= n the matrix's sides, 5 steps, products with a symmetric m x m result cut into 4 strips that
    cost f = 5/8 of a whole product): standard ``5 (2 m^2 n (1 + f) + 2 m^3 f)``; Gram form for a wide
    matrix (restarted after step 2) ``4 m^2 n (1 + f) + 28 m^3 f``, and the standard count for a
    square one."""
    shapes = [(2048, 2048), (5632, 2048), (2048, 5632), (5632, 2048)]
    params = [nn.Parameter(torch.empty(shape, device="meta")) for shape in shapes]
    for p in params:
        p.grad = torch.empty_like(p)
    optimizer = Muon([{"params": params, "use_muon": True}], ns_method=method)
    optimizer.step()
    with OpCosts() as costs:
        optimizer.step()
    expected = 0
    for shape in shapes:
        m, n = sorted(shape)
        wide = method == "gram" and n > 1.5 * m
        f = 5 / 8
        expected += (
            4 * m * m * n * (1 + f) + 28 * m**3 * f if wide else 5 * (2 * m * m * n * (1 + f) + 2 * m**3 * f)
        )
    assert costs.flops == expected
