"""Transposing copies and symmetric sums: the eager ops here, the tiled Triton kernels under Triton's
CPU interpreter (in a subprocess, since the interpreter is chosen when the kernels are defined), and
the fallback that turns a failing kernel off."""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch
from helpers import needs_triton, run_under_triton_interpreter

from pcpretrain import transpose_kernels
from pcpretrain.transpose_kernels import copy_transposed_, set_transpose_kernels, symmetric_sum


def test_copy_transposed_writes_the_transpose_into_a_block_view() -> None:
    c = torch.randn(3, 50, 50)
    expected = c.clone()
    expected[:, 20:40, :20] = c[:, :20, 20:40].mT
    copy_transposed_(c[:, 20:40, :20], c[:, :20, 20:40])
    assert torch.equal(c, expected)


def test_copy_transposed_rejects_mismatched_shapes_and_dtypes() -> None:
    with pytest.raises(ValueError, match=r"cannot copy the transpose of \(3, 4\)"):
        copy_transposed_(torch.empty(3, 4), torch.empty(3, 4))
    with pytest.raises(ValueError, match="torch.bfloat16"):
        copy_transposed_(torch.empty(4, 3), torch.empty(3, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"of \(2, 3, 4\) torch.float32 into \(3, 4, 3\)"):
        copy_transposed_(torch.empty(3, 4, 3), torch.empty(2, 3, 4))


def test_symmetric_sum_in_a_wider_dtype() -> None:
    x = torch.randn(2, 9, 9).to(torch.bfloat16)
    out = symmetric_sum(x, torch.float32)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, x.float() + x.float().mT)
    assert torch.equal(out, out.mT)


# Run under TRITON_INTERPRET=1: every kernel launch on CPU tensors, compared with the eager op it
# replaces, bit for bit, on shapes that are not multiples of the tile, on block views of larger stacks,
# in every dtype the products use; then the callers with strips cut small enough to use them.
INTERPRETED_CHECKS = textwrap.dedent(
    """
    import warnings
    import torch
    from pcpretrain import transpose_kernels as tk
    from pcpretrain.batched_matmul import symmetric_matmul, symmetric_strips
    from pcpretrain.optim.newton_schulz import orthogonalize
    from pcpretrain.pc.polynomial import polynomial_map_vjp, scaled_gram

    warnings.simplefilter("error")  # a kernel turning itself off warns: fail instead
    torch.manual_seed(0)
    assert tk._kernel_applies("copy", torch.ones(2, 2)) and tk._kernel_applies("sum", torch.ones(2, 2))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        stack = torch.randn(3, 150, 150).to(dtype)
        for dst, src in [
            (stack[:, 70:150, :70], stack[:, :70, 70:150]),  # 80 x 70 block of a stack
            (stack[1, 5:9, 100:137], stack[1, 100:137, 5:9]),  # a lone matrix, 4 x 37
        ]:
            expected = src.mT.clone()
            assert torch.equal(tk.copy_transposed_(dst, src), expected), (dtype, dst.shape)
        for x in (stack, stack[2, :130, :130]):
            for out_dtype in (torch.float32, torch.float64):
                wide = x.to(out_dtype)
                assert torch.equal(tk.symmetric_sum(x, out_dtype), wide + wide.mT), (dtype, x.shape)
    wide_dtypes = (torch.float32, torch.float64)
    assert tk._CHECKED == {("copy", d, "cpu") for d in (*wide_dtypes, torch.bfloat16)} | {
        ("sum", d, "cpu") for d in wide_dtypes
    }

    def run_callers():
        with symmetric_strips(4, 32):
            x = torch.randn(3, 160, 96)
            grad = torch.randn(3, 160, 96)
            gram = scaled_gram(x)
            return (
                symmetric_matmul([(x.mT, x)]),
                orthogonalize(torch.randn(2, 130, 200), steps=3, dtype=torch.bfloat16, method="gram"),
                *polynomial_map_vjp(x, grad, 4, gram=gram, product_dtype=torch.bfloat16),
            )

    torch.manual_seed(1)
    tiled = run_callers()
    tk.set_transpose_kernels(False)
    torch.manual_seed(1)
    eager = run_callers()
    assert all(torch.equal(a, b) for a, b in zip(tiled, eager, strict=True))
    print("interpreted kernels match")
    """
)


@needs_triton
def test_kernels_under_the_interpreter_match_the_eager_ops_bit_for_bit() -> None:
    assert "interpreted kernels match" in run_under_triton_interpreter(INTERPRETED_CHECKS)


def _wrong_transpose_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Stands in for a kernel that runs but writes the wrong values."""
    dst.fill_(7.0)


@needs_triton
def test_a_kernel_that_differs_from_the_eager_op_turns_itself_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from pcpretrain import transpose_tiles

    monkeypatch.setattr(transpose_tiles, "transpose_into", _wrong_transpose_into)
    monkeypatch.setattr(transpose_kernels, "_DISABLED", set())
    monkeypatch.setattr(transpose_kernels, "_CHECKED", set())
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets the (stand-in) kernel take CPU tensors
    src = torch.randn(5, 3)
    with pytest.warns(RuntimeWarning, match="copy kernel is off for this process because its result differs"):
        dst = copy_transposed_(torch.empty(3, 5), src)
    assert torch.equal(dst, src.mT)
    assert sorted(transpose_kernels._DISABLED) == ["copy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # off now: no second warning, the eager op runs
        assert torch.equal(copy_transposed_(torch.empty(3, 5), src), src.mT)


def test_the_benchmark_switch_turns_the_kernels_off_and_back() -> None:
    previous = set_transpose_kernels(False)
    try:
        assert transpose_kernels.transposes_label() == "transposes eager"
        assert not transpose_kernels._kernel_applies("copy", torch.ones(2, 2, device="meta"))
    finally:
        set_transpose_kernels(previous)
    assert set_transpose_kernels(previous) is previous


def test_compiled_code_keeps_the_eager_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Traced by torch.compile (a compiled layer computing W_eff in evaluation), the ops stay eager: a
    kernel launch or its first check on traced tensors would break the graph or turn the kernel off."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors would take the kernels outside tracing
    seen = []

    def fill(c: torch.Tensor) -> torch.Tensor:
        seen.append(transpose_kernels._kernel_applies("copy", c))
        copy_transposed_(c[4:, :4], c[:4, 4:])
        return c * 2

    c = torch.randn(8, 8)
    expected = c.clone()
    expected[4:, :4] = c[:4, 4:].mT
    assert torch.equal(torch.compile(fill, fullgraph=True)(c), expected * 2)
    assert seen == [False]


@needs_triton
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_kernels_compile_for_an_h100_and_transpose_through_shared_memory(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ahead of time, with no GPU: Triton lowers both kernels to PTX and a cubin for sm_90 (the H100),
    and each moves its tiles through shared memory, the transpose that keeps global reads and writes
    coalesced."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from pcpretrain import transpose_tiles

    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # no effect on these kernels; silences a notice
    arguments = {
        transpose_tiles._transpose_tiles: {
            "src": f"*{dtype}",
            "dst": f"*{dtype}",
            "rows": "i32",
            "cols": "i32",
        },
        transpose_tiles._symmetric_sum_tiles: {"x": f"*{dtype}", "out": "*fp32", "n": "i32"},
    }
    for kernel, leading in arguments.items():
        strides = {name: "i64" for name in kernel.arg_names if name not in leading and name != "BLOCK"}
        source = ASTSource(kernel, {**leading, **strides, "BLOCK": "constexpr"}, constexprs={"BLOCK": 64})
        compiled = compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], kernel
        ptx = compiled.asm["ptx"]
        # Tiles go into shared memory and come back transposed (16-bit ones by ldmatrix's .trans).
        assert "st.shared" in ptx and ("ld.shared" in ptx or "ldmatrix" in ptx) and "st.global" in ptx, kernel
