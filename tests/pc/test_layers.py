"""Tests of polynomial preconditioning against independent float64 references."""

from __future__ import annotations

import re

import pytest
import torch
from pc_reference import F64, rand
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from pcpretrain.choices import DEFAULT_PC_TARGETS
from pcpretrain.pc import (
    PCLinear,
    PCStep,
    apply_pc,
    effective_weight,
    merge_state_dict,
    pc_modules,
    polynomial_map,
    precondition,
)
from pcpretrain.pc.polynomial import smaller_gram


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
        apply_pc(model, 4, targets=[*DEFAULT_PC_TARGETS, "*.mlp.nonexistent"])
    assert "q_proj" in str(info.value)  # shows example module names
    assert pc_modules(model) == []  # nothing half-converted
    assert apply_pc(model, 0) == [] and pc_modules(model) == []
    apply_pc(model, 2)
    with pytest.raises(ValueError, match="already"):
        apply_pc(model, 2)


def test_statistics_and_updates():
    model = tiny_llama()
    assert PCStep(model).statistics() == {}
    apply_pc(model, 4, power_iters=50)
    step = PCStep(model)
    step.update_spectral()
    stats = {key: float(value) for key, value in step.statistics().items()}
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
    step = PCStep(model)
    if per_step:
        step.begin()
    for tokens in micro_batches:
        loss = model(input_ids=tokens, labels=tokens).loss / len(micro_batches)
        loss.backward()
    if per_step:
        step.finish()
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


def test_the_gram_kept_between_phases_is_dropped_when_the_weights_change(monkeypatch) -> None:
    """The power iteration's Gram serves the next step's W_eff and its backward, one Gram per layer per
    step; a weight changed in between (here by hand) is seen, and W_eff is the freshly computed one."""
    from pcpretrain.pc import step as pc_step

    model = tiny_llama().to(F64).train()
    apply_pc(model, 4)
    grams, stacks = [], []
    monkeypatch.setattr(pc_step, "smaller_gram", lambda w: grams.append(len(w)) or smaller_gram(w))
    weights = {id(mod.weight) for _, mod in pc_modules(model)}
    own_slice_stack = pc_step.own_slice_stack

    def counted_stack(params, rank, world, dtype=None):
        stacks.extend([1] if id(params[0]) in weights else [])
        return own_slice_stack(params, rank, world, dtype)

    monkeypatch.setattr(pc_step, "own_slice_stack", counted_stack)
    step = PCStep(model)
    modules = [mod for _, mod in pc_modules(model)]
    tokens = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    for changed_by_hand in (False, True, False):
        step.begin()
        expected = [mod.effective_weight() for mod in modules]
        for mod, weight in zip(modules, expected, strict=True):
            torch.testing.assert_close(mod.step_weight, weight, rtol=1e-12, atol=1e-14)
        model(input_ids=tokens, labels=tokens).loss.backward()
        step.finish()
        with torch.no_grad():
            for mod in modules:
                mod.weight.sub_(1e-2 * mod.weight.grad)
        model.zero_grad(set_to_none=True)
        step.update_spectral()
        if changed_by_hand:
            with torch.no_grad():
                modules[0].weight.mul_(1.5)
    groups = len(step.groups)
    # Step 1 computes its Gram, steps 2 and 3 reuse the power iteration's, except for the group changed by
    # hand before step 3.
    assert len(grams) == groups + 3 * groups + 1
    # The weights are stacked in begin, finish and the power iteration of step 1; steps 2 and 3 begin
    # with the power iteration's stack, except for the group changed by hand.
    assert len(stacks) == 3 * groups + 2 * 2 * groups + 1


def test_a_layer_no_micro_batch_reached_gets_a_zero_gradient() -> None:
    """The step's gradient buffers start uninitialised (the first gradient is copied in): a step with
    no backward at all must still hand the weights zeros, not what the memory held."""
    model = tiny_llama().to(F64).train()
    apply_pc(model, 4)
    step = PCStep(model)
    step.begin()
    for _, mod in pc_modules(model):
        mod.step_grad.fill_(float("nan"))
    step.finish()
    for _, mod in pc_modules(model):
        assert torch.equal(mod.weight.grad, torch.zeros_like(mod.weight))
        assert torch.equal(mod.pc_gamma.grad, torch.zeros_like(mod.pc_gamma))


def test_per_step_transform_is_computed_once_and_shared_by_micro_batches(monkeypatch) -> None:
    model = tiny_llama().train()
    apply_pc(model, 2)
    calls = []
    original = PCLinear.effective_weight
    monkeypatch.setattr(PCLinear, "effective_weight", lambda self: calls.append(1) or original(self))
    forwards = []
    for _, mod in pc_modules(model):
        mod.register_forward_hook(lambda mod, args, out: forwards.append(mod.step_weight.data_ptr()))
    step = PCStep(model)
    step.begin()
    for seed in range(4):
        tokens = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(seed))
        model(input_ids=tokens, labels=tokens).loss.backward()
    modules = [mod for _, mod in pc_modules(model)]
    assert len(set(forwards)) == len(modules) and len(forwards) == 4 * len(modules)  # one W_eff each
    assert all(mod.step_weight is not None and mod.step_grad is not None for mod in modules)
    assert calls == []  # computed for all layers together, not by each layer
    step.finish()
    assert calls == []  # the closed-form backward does not recompute W_eff
    assert all(mod.step_weight is None and mod.step_grad is None for mod in modules)
    assert all(mod.weight.grad is not None and mod.pc_gamma.grad is not None for mod in modules)


@pytest.mark.parametrize("product_dtype", [None, torch.bfloat16])
def test_per_step_weight_in_autocast_dtype_gives_the_per_forward_gradients(product_dtype) -> None:
    """Under bf16 autocast the step keeps W_eff only in bf16 and sums the gradients in float32; with
    bf16 products (pc.bf16_products) the gradients stay as close to the float32 per-forward ones."""
    model = tiny_llama().train()
    apply_pc(model, 4)
    micro_batches = [
        torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(3)
    ]

    def grads(per_step: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        step = PCStep(model, forward_dtype=torch.bfloat16, product_dtype=product_dtype)
        if per_step:
            step.begin()
        for tokens in micro_batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=tokens, labels=tokens).loss / len(micro_batches)
            loss.backward()
            if per_step:
                mod = pc_modules(model)[0][1]
                assert mod.step_weight.dtype == torch.bfloat16 and mod.step_weight.grad is None
                assert mod.step_grad.dtype == torch.float32
        if per_step:
            step.finish()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    # The stacked float32 products round differently from per-matrix ones, so a few entries of the bf16
    # W_eff differ by one unit in the last place; bf16 forwards turn that into ~0.5% gradient noise.
    # (Gammas' gradients are cancellation-dominated inner products, checked in float64 elsewhere.)
    per_forward, per_step = grads(False), grads(True)
    for name, grad in per_forward.items():
        assert per_step[name].dtype == torch.float32
        rel = float((per_step[name] - grad).norm() / grad.norm())
        assert name.endswith("pc_gamma") or rel < 2e-2, (name, rel)


@pytest.mark.parametrize("tf32", [True, False])
def test_the_per_forward_transform_runs_under_pc_tf32_and_restores_the_global_flag(
    tf32: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Sequential(nn.Linear(8, 6, bias=False))
    apply_pc(model, 2, ["0"], 2, seed=0)
    PCStep(model, per_step=False, tf32=tf32)
    seen = []
    layer = model[0]
    original = type(layer).effective_weight

    def recording(self: nn.Module) -> torch.Tensor:
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return original(self)

    monkeypatch.setattr(type(layer), "effective_weight", recording)
    before = torch.backends.cuda.matmul.allow_tf32
    model(torch.randn(2, 8))
    assert seen == [tf32]
    assert torch.backends.cuda.matmul.allow_tf32 == before
