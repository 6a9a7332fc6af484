"""Accuracy of the PC transform as training computes it, against the float64 transform.

For every PC matrix shape of a model config and each degree, it prints the relative Frobenius error
of W_eff (the forward) and of dL/dW (the closed-form backward of the per-step path) when the
transform runs in float32, in TF32 (the GPU default for float32 matmuls: 10-bit mantissa inputs,
float32 accumulation) and in TF32 with its products with the large matrices in bf16
(``pc.bf16_products``), next to the error bf16 autocast adds anyway by rounding W_eff for the matmul.
On a CPU, TF32 is emulated by rounding every matmul operand to TF32 (round to nearest even).

    python scripts/pc_numerics.py                 # Llama-1B shapes, degrees 2 and 4
    python scripts/pc_numerics.py --tiny          # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from pcpretrain.pc.precision import cuda_tf32
from pcpretrain.pc.spectral import power_iteration_
from pcpretrain.pc.transform import effective_weight, effective_weight_vjp

# Hidden size and FFN width of the model configs in pcpretrain/configs/model.
SHAPES = {"1B": (2048, 5632), "271M": (1024, 2816), "tiny": (64, 160)}
_MATMULS = {"matmul", "mm", "bmm", "addmm", "addmm_", "baddbmm", "baddbmm_", "__matmul__", "__rmatmul__"}
# The first argument of these is the added matrix, not an operand.
_OPERANDS = {name: (1, 2) for name in ("addmm", "addmm_", "baddbmm", "baddbmm_")}


def round_to_tf32(x: Tensor) -> Tensor:
    """float32 with its mantissa rounded to TF32's 10 bits, ties to even."""
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return rounded.view(torch.float32)


class EmulatedTF32(TorchFunctionMode):
    """Rounds the float32 operands of every matmul to TF32, as tensor cores read them."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _MATMULS:
            positions = _OPERANDS.get(name, range(len(args)))
            args = tuple(
                round_to_tf32(a)
                if i in positions and isinstance(a, Tensor) and a.dtype == torch.float32
                else a
                for i, a in enumerate(args)
            )
        return func(*args, **kwargs)


def precisions(device: torch.device) -> dict[str, Callable[[], AbstractContextManager]]:
    if device.type == "cuda":
        return {"fp32": lambda: cuda_tf32(False), "tf32": lambda: cuda_tf32(True)}
    return {"fp32": lambda: cuda_tf32(False), "tf32 (emulated)": EmulatedTF32}


def relative_error(got: Tensor, ref: Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


def measure(
    shape: tuple[int, int], degree: int, device: torch.device, seed: int
) -> list[tuple[str, float, float]]:
    """(precision, W_eff error, dL/dW error) rows for one matrix shape and degree."""
    generator = torch.Generator().manual_seed(seed)
    weight = (0.02 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(device)
    grad = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
    u = torch.nn.functional.normalize(torch.randn(shape[0], generator=generator, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(shape[1], generator=generator, dtype=torch.float64), dim=0)
    u, v = u.to(device), v.to(device)
    power_iteration_(weight, u, v, iters=30)
    gamma = torch.ones(1, dtype=torch.float64, device=device)
    ref_weight = effective_weight(weight, gamma, u, v, degree)
    ref_grad, _ = effective_weight_vjp(weight, gamma, u, v, degree, grad)
    args32 = [t.float() for t in (weight, gamma, u, v)]
    rows = []
    for name, context in precisions(device).items():
        with context():
            w_eff = effective_weight(*args32, degree)
            grad_w, _ = effective_weight_vjp(*args32, degree, grad.float())
        rows.append((name, relative_error(w_eff, ref_weight), relative_error(grad_w, ref_grad)))
    with list(precisions(device).values())[1]():
        w_eff = effective_weight(*args32, degree, product_dtype=torch.bfloat16)
        grad_w, _ = effective_weight_vjp(*args32, degree, grad.float(), product_dtype=torch.bfloat16)
    rows.append(("tf32 + bf16 products", relative_error(w_eff, ref_weight), relative_error(grad_w, ref_grad)))
    rows.append(
        ("bf16 cast of W_eff", relative_error(ref_weight.float().bfloat16(), ref_weight), float("nan"))
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="1B", choices=sorted(SHAPES))
    parser.add_argument("--degrees", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="the tiny model's shapes: a smoke run")
    args = parser.parse_args()
    hidden, ffn = SHAPES["tiny" if args.tiny else args.model]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"PC transform error vs float64, {args.model if not args.tiny else 'tiny'} shapes, on {device}")
    print(f"{'shape':>12} {'degree':>6} {'precision':>20} {'W_eff rel err':>14} {'dL/dW rel err':>14}")
    for shape in [(ffn, hidden), (hidden, ffn), (hidden, hidden)]:
        for degree in args.degrees:
            for name, err_weight, err_grad in measure(shape, degree, device, args.seed):
                label = f"{shape[0]}x{shape[1]}"
                print(f"{label:>12} {degree:>6} {name:>20} {err_weight:14.2e} {err_grad:14.2e}")


if __name__ == "__main__":
    main()
