"""Newton-Schulz orthogonalisation: the one place that knows the polynomial iterations Muon uses.

Every set maps a matrix ``G = U S V^T`` to approximately ``U f(S) V^T`` by first normalising ``G`` so
its singular values lie in ``(0, 1]`` and then applying odd quintic polynomials
``X <- a X + b (X X^T) X + c (X X^T)^2 X``, one ``(a, b, c)`` triple per step. The sets differ in
their triples and in how they normalise; each documents the singular-value band its output is
designed to land in (``band`` after ``band_steps`` steps, for normalised singular values in
``[band_floor, 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pcpretrain.batched_matmul import scaled_matmul_add, symmetric_flop_fraction, symmetric_matmul
from pcpretrain.choices import NS_METHODS

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class CoefficientSet:
    """One named iteration: per-step triples (the last repeats) plus its own normalisation.

    ``norm_safety`` multiplies the Frobenius norm before dividing by it, leaving headroom for rounding
    so no singular value starts above 1. ``aol_safety``, when set, adds the AOL row rescaling after the
    Frobenius step (see :func:`aol_rescale`).
    """

    schedule: tuple[Triple, ...]
    band: tuple[float, float]
    band_steps: int
    band_floor: float
    norm_safety: float = 1.0
    aol_safety: float | None = None
    source: str = ""

    def triples(self, steps: int) -> list[Triple]:
        """The triple for each of ``steps`` iterations; steps past the schedule reuse its last triple."""
        last = len(self.schedule) - 1
        return [self.schedule[min(i, last)] for i in range(steps)]


def _with_safety(triples: tuple[Triple, ...], factor: float) -> tuple[Triple, ...]:
    """Shrink every polynomial but the last as p(x / factor), the Polar Express guard against overshoot."""
    shrunk = tuple((a / factor, b / factor**3, c / factor**5) for a, b, c in triples[:-1])
    return shrunk + triples[-1:]


# Quintic from the Muon reference (Keller Jordan, 2024): steep at 0 (slope 3.4445) so small singular
# values grow fast, at the price of oscillating in roughly [0.68, 1.13] instead of converging to 1.
SIMPLE: Triple = (3.4445, -4.7750, 2.0315)

# The classical Newton-Schulz quintic for the polar factor, p(x) = (15 x - 10 x^3 + 3 x^5) / 8:
# p(1) = 1 with p'(1) = p''(1) = 0, so it converges to exactly 1 but grows small values only 1.875x a step.
QUINTIC: Triple = (1.875, -1.25, 0.375)

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932), as published in the authors'
# repository (NoahAmsel/PolarExpress, polar_express/basic.py): the minimax-optimal composition for
# l = 1e-3, 8 iterations, cushion 0.02, before its 1.01 safety factor (applied in _with_safety). The
# last entry is the classical quintic, which all further steps reuse.
POLAR_EXPRESS_RAW: tuple[Triple, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    QUINTIC,
)
POLAR_EXPRESS_SAFETY = 1.01

# Turbo-Muon (Boissin et al., thib-s/flash-newton-schulz; modded-nanogpt record 2025-11-11_TurboMuon):
# Frobenius scaling is replaced by AOL row rescaling (here applied after it, so the eps is scale-free);
# after AOL rescaling the first Polar Express step is dropped and these four run, taken from the
# 5-iteration Polar Express schedule computed with a 2e-2 safety factor (coefficients already include
# it). Here the classical quintic follows them, so steps past the published four converge to 1 (reusing
# the fourth triple instead would settle near 1.035).
TURBO_MUON: tuple[Triple, ...] = (
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
AOL_SAFETY = 1.02

COEFFICIENT_SETS: dict[str, CoefficientSet] = {
    "simple": CoefficientSet(
        schedule=(SIMPLE,),
        band=(0.68, 1.14),
        band_steps=5,
        band_floor=1e-2,
        source="Muon reference (Keller Jordan, 2024); band [0.682, 1.134] once reached, and it stays there",
    ),
    "quintic": CoefficientSet(
        schedule=(QUINTIC,),
        band=(0.999, 1.001),
        band_steps=15,
        band_floor=1e-3,
        source="classical Newton-Schulz for the polar factor (Higham, Functions of Matrices, ch. 8)",
    ),
    "polar_express": CoefficientSet(
        schedule=_with_safety(POLAR_EXPRESS_RAW, POLAR_EXPRESS_SAFETY),
        band=(0.84, 1.13),
        band_steps=5,
        band_floor=1e-3,
        norm_safety=POLAR_EXPRESS_SAFETY,
        source="Amsel et al. 2025 (arXiv:2505.16932), authors' coefficients; [0.84, 1.124] at 5 steps, "
        "[0.993, 1.001] at 6, exactly 1 from 8 on",
    ),
    "aol": CoefficientSet(
        schedule=(*TURBO_MUON, QUINTIC),
        band=(0.85, 1.15),
        band_steps=4,
        band_floor=1e-2,
        aol_safety=AOL_SAFETY,
        source="Turbo-Muon: AOL preconditioning (Prach & Lampert 2022, arXiv:2208.03160) + Polar Express "
        "minus its first step; [0.859, 1.141] at 4 steps, [0.993, 1.008] at 5, 1 from 6 on (floor after AOL)",
    ),
}


def coefficient_set(name: str) -> CoefficientSet:
    """Look a set up by name, failing with the list of valid names (config typos surface here)."""
    if name not in COEFFICIENT_SETS:
        raise ValueError(
            f"unknown Newton-Schulz coefficient set {name!r}; choose one of {sorted(COEFFICIENT_SETS)}"
        )
    return COEFFICIENT_SETS[name]


def frobenius_normalize(
    x: Tensor, safety: float = 1.0, eps: float = 1e-7, dtype: torch.dtype | None = None
) -> Tensor:
    """Divide each matrix by (safety x) its Frobenius norm, an upper bound on its spectral norm.

    The norm and the quotient are computed in at least float32, reading ``x`` in its own dtype (a bf16
    ``x`` is widened inside the kernels, never copied), and the quotient is written straight in
    ``dtype`` (default: ``x``'s), in ``x``'s memory layout: the same numbers as from a float32 copy of
    ``x``, without that copy or a separate conversion pass.
    """
    wide = torch.promote_types(x.dtype, torch.float32)
    norm = torch.linalg.matrix_norm(x, keepdim=True, dtype=wide) * safety + eps
    return torch.div(x, norm, out=torch.empty_like(x, dtype=dtype or x.dtype))


def aol_rescale(x: Tensor, safety: float = AOL_SAFETY, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """AOL row rescaling ``X <- diag(s) X`` with ``s_i = (safety * sum_j |X X^T|_ij)^(-1/2)``.

    The row sums of ``|X X^T|`` bound its largest eigenvalue (Gershgorin), so the result has spectral
    norm at most ``1 / sqrt(safety)`` while rows are individually equalised, which usually lifts the
    small singular values well above what Frobenius scaling leaves. The price: the iteration then
    converges to the polar factor of ``diag(s) X``, which is orthogonal but differs from that of ``X``
    unless the rows have equal weight (cosine ~0.99 on test matrices). Returns the rescaled ``X`` and
    its Gram ``diag(s) (X X^T) diag(s)``, which the first iteration reuses instead of recomputing.
    """
    gram = symmetric_matmul([(x, x.mT)])
    s = torch.rsqrt(gram.abs().sum(dim=-1) * safety + eps)
    return x * s.unsqueeze(-1), gram * s.unsqueeze(-1) * s.unsqueeze(-2)


def _normalize(x: Tensor, cs: CoefficientSet, eps: float, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Apply the set's own normalisation, returning ``dtype``; also a reusable Gram when it made one."""
    if cs.aol_safety is None:
        return frobenius_normalize(x, cs.norm_safety, eps, dtype), None
    wide = torch.promote_types(x.dtype, torch.float32)
    x, gram = aol_rescale(frobenius_normalize(x, cs.norm_safety, eps, wide), cs.aol_safety, eps)
    return x.to(dtype), gram.to(dtype)


def _iterate(x: Tensor, triples: list[Triple], gram: Tensor | None, transposed: bool) -> Tensor:
    """Run ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (``gram`` stands in for the first A).

    Each step is three matmuls with the scalings and sums in their epilogues, no elementwise kernel
    of its own (an elementwise pass over the large X costs a noticeable fraction of a matmul at the 1B
    shapes). ``transposed``: return X^T, contiguous, which the last product gives for free (the
    polynomial is symmetric), so a tall input comes back in its own layout without a transposing copy.
    """
    last = len(triples) - 1
    for i, (a, b, c) in enumerate(triples):
        gram_x = gram if i == 0 and gram is not None else symmetric_matmul([(x, x.mT)])
        poly = symmetric_matmul([(gram_x, gram_x)], gram_x, beta=b, alpha=c)
        if i == last and transposed:
            return scaled_matmul_add(x.mT, x.mT, poly, beta=a, alpha=1.0)
        x = scaled_matmul_add(x, poly, x, beta=a, alpha=1.0)
    return x


# Iterations after which the Gram form re-forms X and its Gram matrix, where it iterates on the Gram
# matrix to save FLOPs (see _iterate_on_gram and gram_restarts).
GRAM_RESTARTS: tuple[int, ...] = (2,)


def _iterate_on_gram(
    x: Tensor, triples: list[Triple], gram: Tensor | None, transposed: bool, restarts: tuple[int, ...]
) -> Tensor:
    """The iterates of :func:`_iterate` for a wide ``x`` (m <= n), computed on the m x m Gram matrix.

    Each step multiplies X on the left by ``Z = a I + b R + c R^2``, a polynomial in ``R = X X^T``, so
    from one re-formed X_j on, ``X_k = Q X_j`` with Q the product of the Z's, and R follows as
    ``Z R Z``: the long side n enters only to form R and to apply Q. Equal to :func:`_iterate` in exact
    arithmetic; in bf16, rounding in R compounds (it can grow small negative eigenvalues that the odd
    polynomial amplifies), so after each iteration in ``restarts`` X is re-formed as ``Q X`` and R
    recomputed from it (the restarted Gram Newton-Schulz of Dao lab, 2026). Restarting after every
    step is the standard iteration with ``a`` added to Z's diagonal: one plain product ``Z X`` per
    step where :func:`_iterate` reads and writes X twice more for its scaled sum. ``transposed`` as in
    :func:`_iterate` (Q is symmetric: a product of commuting symmetric polynomials in R).
    """
    r = symmetric_matmul([(x, x.mT)]) if gram is None else gram
    q: Tensor | None = None
    for i, (a, b, c) in enumerate(triples, start=1):
        z = symmetric_matmul([(r, r)], r, beta=b, alpha=c)
        z.diagonal(dim1=-2, dim2=-1).add_(a)
        q = z if q is None else symmetric_matmul([(z, q)])
        if i == len(triples):
            break
        if i in restarts:
            x, q = q @ x, None
            r = symmetric_matmul([(x, x.mT)])
        else:
            r = symmetric_matmul([(symmetric_matmul([(z, r)]), z)])
    return x.mT @ q if transposed else q @ x


def gram_restarts(m: int, n: int, steps: int) -> tuple[int, ...]:
    """Where :func:`_iterate_on_gram` restarts for a wide m x n X: after :data:`GRAM_RESTARTS` when
    iterating on the Gram matrix takes fewer multiply-adds than the standard iteration, else after every
    step (the standard iteration's FLOPs, fewer passes over X).

    In multiply-adds, with ``f`` the share of a product with an m x m symmetric result that is
    computed (:func:`symmetric_flop_fraction`; every m x m product here is one): standard
    ``steps (m^2 n (1 + f) + m^3 f)``; Gram form ``m^2 n f`` per formed R, ``m^2 n`` per applied Q,
    ``m^3 f`` per R^2, per Q update and per half of each R update. For 5 steps it wins once
    n > 3f / (1 + f) m: 1.5 m for whole products, 1.15 m for 4 strips.
    """
    f = symmetric_flop_fraction(m)
    standard = steps * (m * m * n * (1 + f) + m**3 * f)
    gram, fresh = m * m * n * f, True
    for i in range(1, steps + 1):
        gram += m**3 * f * (1 if fresh else 2)
        fresh = False
        if i == steps:
            break
        if i in GRAM_RESTARTS:
            gram, fresh = gram + m * m * n * (1 + f), True
        else:
            gram += 2 * m**3 * f
    return GRAM_RESTARTS if gram + m * m * n < standard else tuple(range(1, steps))


def orthogonalize(
    g: Tensor,
    steps: int = 5,
    coefficients: str = "simple",
    dtype: torch.dtype = torch.bfloat16,
    eps: float = 1e-7,
    out_dtype: torch.dtype | None = None,
    method: str = "standard",
) -> Tensor:
    """Approximate the polar factor ``U V^T`` of ``g`` (shape ``(..., m, n)``) in the set's band.

    Normalisation runs in at least float32, the iteration in ``dtype``; wide and tall inputs are
    oriented so the Gram ``X X^T`` is on the smaller side. ``method="gram"`` iterates on the Gram
    matrix where that takes fewer FLOPs, and elsewhere runs the standard iteration as one plain product
    per step (:func:`gram_restarts`). Returns a contiguous tensor of ``g``'s shape in ``out_dtype``
    (default ``g``'s dtype; the iteration's dtype saves a conversion pass).
    """
    if g.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix or a batch of matrices, got shape {tuple(g.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in NS_METHODS:
        raise ValueError(f"unknown Newton-Schulz method {method!r}; choose one of {list(NS_METHODS)}")
    cs = coefficient_set(coefficients)
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    x, gram = _normalize(x, cs, eps, dtype)
    if method == "gram":
        restarts = gram_restarts(*x.shape[-2:], steps)
        x = _iterate_on_gram(x, cs.triples(steps), gram, tall, restarts)
    else:
        x = _iterate(x, cs.triples(steps), gram, tall)
    return x.to(out_dtype or g.dtype)
