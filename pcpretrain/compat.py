"""Every use of a library's private API, in one place, each with a test (``tests/test_compat.py``).

These were checked against the versions in :data:`CHECKED_AGAINST`; when a library changes one of
them, its test here fails with the name of the function to adapt, instead of a run failing deep in
training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

CHECKED_AGAINST = {"torch": "2.13", "transformers": "5.24", "accelerate": "1.15", "deepspeed": "0.19"}

# The attribute torch.compile wraps a module's original under, and which regional compilation
# inserts into parameter names (``layers.0._orig_mod.mlp...``).
COMPILED_ORIGINAL = "_orig_mod"
# Prefixes that wrappers put before every parameter name (DDP's ``module.``, compile's ``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", f"{COMPILED_ORIGINAL}.")


def uncompiled(module: nn.Module) -> nn.Module:
    """The module torch.compile wrapped, or ``module`` itself when it is not compiled."""
    return getattr(module, COMPILED_ORIGINAL, module)


def plain_parameter_name(name: str) -> str:
    """A parameter's name as in the plain model: without compile's inner level and wrappers' prefixes."""
    name = name.replace(f".{COMPILED_ORIGINAL}.", ".")
    for prefix in WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def ddp_ignore(model: nn.Module, names: Sequence[str]) -> None:
    """Keep parameters out of DDP's gradient all-reduce (their gradients arrive after DDP's backward).

    torch has no public way to do this for a model that accelerate wraps in DDP later; the static
    helper records the names on the module, where DDP's constructor reads them.
    """
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(names))


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state (precision, engine) so the next Accelerator starts afresh;
    the process group, if any, is kept. A sweep runs its points in one process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def force_fsdp_state(accelerator, plugin) -> None:
    """Put accelerate's state on its FSDP path also on CPUs, where it drops the plugin silently.

    The two fields are the ones ``AcceleratorState`` sets itself on GPUs; ``PartialState`` keeps a copy
    that later ``AcceleratorState()`` calls read back.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP


def set_last_lr(scheduler, lrs: Sequence[float]) -> None:
    """What ``scheduler.get_last_lr()`` returns, after the groups' lr were set outside ``step()``."""
    scheduler._last_lr = list(lrs)


def local_shard(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor, the very tensor it holds (``to_local()`` makes a new view each
    call, one op per parameter); plain tensors pass through."""
    from torch.distributed.tensor import DTensor

    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor


def zero3_copy_next_gradients(engine: Any) -> None:
    """Have DeepSpeed ZeRO-3 copy, not add, the gradients of the next backward into its partitions.

    Stage 3 copies each gradient into the parameter's partition in a step's first micro-step and adds it
    in later ones (its optimizer's ``micro_step_id``), counting on every parameter receiving a gradient
    in the first. The PC weights and gammas receive theirs only in one backward after all micro-batches,
    so with accumulation it would add onto the previous step's gradient still in their partitions.
    Only parameters with a gradient in that backward are touched, so the others' sums are kept.
    """
    if engine.zero_optimization_stage() == 3:
        engine.optimizer.micro_step_id = 0


def output_cache(outputs: Any) -> dict[str, Any]:
    """A model output's KV cache as the keyword the output classes of this transformers take: ``cache``
    (recent 5.x, where ``past_key_values`` is a deprecated alias) or ``past_key_values`` (earlier 5.x)."""
    if "cache" in type(outputs).__dataclass_fields__:
        return {"cache": outputs.cache}
    return {"past_key_values": outputs.past_key_values}
