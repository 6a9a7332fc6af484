"""PC layers: polynomial preconditioning of weight matrices, everything about it in one package.

- :mod:`~pcpretrain.pc.polynomial`: the polynomial q_k and its closed-form backward (pure, batched);
- :mod:`~pcpretrain.pc.spectral`: the spectral-norm estimate and power iteration;
- :mod:`~pcpretrain.pc.transform`: W_eff and its gradient with sigma and gamma;
- :mod:`~pcpretrain.pc.layers` and :mod:`~pcpretrain.pc.surgery`: PCLinear and swapping it into a model;
- :mod:`~pcpretrain.pc.step`: the per-step phases the Trainer calls, split across ranks;
- :mod:`~pcpretrain.pc.merge`: folding W_eff back into plain weights.
"""

from pcpretrain.pc.layers import PCLinear, pc_modules
from pcpretrain.pc.merge import merge_state_dict, pc_layer_scales
from pcpretrain.pc.polynomial import PC_COEFFICIENTS, check_degree, polynomial_map, precondition
from pcpretrain.pc.step import PCStep, ddp_ignored_names
from pcpretrain.pc.surgery import apply_pc
from pcpretrain.pc.transform import effective_weight, effective_weight_vjp

__all__ = [
    "PC_COEFFICIENTS",
    "PCLinear",
    "PCStep",
    "apply_pc",
    "check_degree",
    "ddp_ignored_names",
    "effective_weight",
    "effective_weight_vjp",
    "merge_state_dict",
    "pc_layer_scales",
    "pc_modules",
    "polynomial_map",
    "precondition",
]
