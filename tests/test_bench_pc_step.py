"""The PC-phase benchmark runs end to end on a tiny model and accounts for every phase's FLOPs."""

from __future__ import annotations

import ast
import re

import pytest
from helpers import run_script

pytestmark = pytest.mark.slow

PHASES = ("begin", "finish", "spectral", "total")
# Products of two n x n matrices at degree 4: q(G) as c0 I + c1 G + c2 G^2 + G^2 (c3 G + c4 G^2) takes
# two (G^2, then G^2 T); its derivative along S three (S G, D(G^2) T, G^2 D(T)).
POLYNOMIAL_PRODUCTS, DERIVATIVE_PRODUCTS = 2, 3
POWER_ITERS = 10


def phase_flops(shapes: dict[tuple[int, int], int], symmetric: float = 1.0) -> dict[str, float]:
    """The phases' matrix-product FLOPs by hand, for degree 4 (m >= n the sides of each matrix):
    begin ``W q`` (m n^2) and q (2 n^3), the Gram coming from the power iteration; finish
    ``W^T dW_eff``, ``dW_eff q`` and ``W Dq[A + A^T]`` (3 m n^2), q again and its derivative (5 n^3),
    sigma's rank-one term (m n) (the inner products are elementwise: no FLOPs); spectral the Gram (m n^2),
    two m x n matrix-vector products (the iteration's first and last, whose W v sigma reuses) and 9
    n x n ones. The products
    whose result is symmetric (the Gram, q's two and the derivative's last two) cost ``symmetric`` of
    a whole one."""
    totals = dict.fromkeys(PHASES[:-1], 0.0)
    polynomial = POLYNOMIAL_PRODUCTS * symmetric
    for shape, count in shapes.items():
        m, n = sorted(shape, reverse=True)
        totals["begin"] += count * 2 * (m * n * n + polynomial * n**3)
        derivative = 1 + (DERIVATIVE_PRODUCTS - 1) * symmetric
        totals["finish"] += count * 2 * (3 * m * n * n + (polynomial + derivative) * n**3 + m * n)
        totals["spectral"] += count * 2 * (m * n * n * symmetric + 2 * m * n + (POWER_ITERS - 1) * n * n)
    return totals


def table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for phase in PHASES:
        row = re.search(rf"^{phase}\s+(.*)$", stdout, re.MULTILINE)
        assert row, stdout
        rows[phase] = row.group(1).split()
    return rows


def layers_per_shape(stdout: str) -> dict[tuple[int, int], int]:
    return ast.literal_eval(re.search(r"layers per shape (\{.*\})", stdout).group(1))


def test_bench_pc_step_tiny_times_every_phase_and_counts_its_flops_and_other_traffic() -> None:
    result = run_script("bench_pc_step.py", "--model", "tiny", "--steps", "1", "--warmup", "0", timeout=300)
    rows = table(result.stdout)
    expected = phase_flops(layers_per_shape(result.stdout))
    for phase, (ms, gigaflops, _rate, gigabytes) in rows.items():
        assert float(ms) > 0 and float(gigabytes) > 0
        if phase != "total":
            assert float(gigaflops) == pytest.approx(expected[phase] / 1e9, abs=1e-3)
    gigabytes = {phase: float(row[3]) for phase, row in rows.items()}
    assert gigabytes["total"] == pytest.approx(sum(v for k, v in gigabytes.items() if k != "total"), abs=2e-3)

    counted = table(run_script("bench_pc_step.py", "--model", "tiny", "--count-only", timeout=300).stdout)
    for phase in PHASES:
        assert counted[phase][0] == counted[phase][2] == "-"
        # The same products; the traffic differs, since on meta W_eff is kept in bf16 as on a GPU.
        assert counted[phase][1] == rows[phase][1] and float(counted[phase][3]) > 0


def test_bench_pc_step_counts_the_busiest_ranks_share() -> None:
    """``--ranks N``: each shape group's first slice as training cuts it (ceil(count / N) layers), and
    exactly the FLOPs of those layers."""
    whole = layers_per_shape(run_script("bench_pc_step.py", "--model", "tiny", "--count-only").stdout)
    result = run_script("bench_pc_step.py", "--model", "tiny", "--count-only", "--ranks", "3")
    assert "the busiest of 3 ranks' share" in result.stdout
    share = layers_per_shape(result.stdout)
    assert share == {shape: -(-count // 3) for shape, count in whole.items()} != whole
    expected = phase_flops(share)
    for phase, row in table(result.stdout).items():
        if phase != "total":
            assert float(row[1]) == pytest.approx(expected[phase] / 1e9, abs=1e-3)


@pytest.mark.parametrize("strips", [1, 4])
def test_bench_pc_step_counts_the_1b_floors_with_and_without_strips(strips: int) -> None:
    """At the 1B shapes (n = 2048) the symmetric products run in 4 strips by default: 5/8 of their
    FLOPs; ``--symmetric-strips 1`` counts whole products."""
    result = run_script("bench_pc_step.py", "--count-only", "--symmetric-strips", str(strips), timeout=300)
    assert "symmetric products " + ("whole" if strips == 1 else "in up to 4 strips") in result.stdout
    expected = phase_flops(layers_per_shape(result.stdout), symmetric=5 / 8 if strips == 4 else 1.0)
    for phase, row in table(result.stdout).items():
        if phase != "total":
            assert float(row[1]) == pytest.approx(expected[phase] / 1e9, abs=1e-3)
