"""Each private API the project relies on still does what :mod:`pcpretrain.compat` expects of it."""

from __future__ import annotations

import torch
from torch import nn

from pcpretrain import compat


def test_uncompiled_and_plain_names_see_through_torch_compile() -> None:
    linear = nn.Linear(2, 2)
    compiled = torch.compile(linear, backend="eager")
    assert compat.uncompiled(compiled) is linear
    assert compat.uncompiled(linear) is linear
    wrapped = nn.Sequential(nn.Module())
    wrapped[0].add_module("layer", compiled)
    names = [compat.plain_parameter_name(f"module.{n}") for n, _ in wrapped.named_parameters()]
    assert names == ["0.layer.weight", "0.layer.bias"]


def test_ddp_ignore_records_the_names_ddp_reads() -> None:
    model = nn.Linear(2, 2)
    compat.ddp_ignore(model, ["weight"])
    assert set(model._ddp_params_and_buffers_to_ignore) == {"weight"}


def test_reset_accelerate_state_forgets_the_precision() -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    compat.reset_accelerate_state()
    Accelerator(cpu=True, mixed_precision="no")
    compat.reset_accelerate_state()
    assert not AcceleratorState._shared_state
    Accelerator(cpu=True, mixed_precision="bf16")  # refused while the state remembered "no"
    compat.reset_accelerate_state()


def test_force_fsdp_state_switches_every_later_state_view_to_fsdp() -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    compat.reset_accelerate_state()
    accelerator = Accelerator(cpu=True)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    compat.force_fsdp_state(accelerator, plugin)
    assert AcceleratorState().distributed_type == DistributedType.FSDP
    assert PartialState().distributed_type == DistributedType.FSDP
    assert accelerator.state.fsdp_plugin is plugin
    compat.reset_accelerate_state()


def test_set_last_lr_is_what_get_last_lr_returns() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    compat.set_last_lr(scheduler, [0.25])
    assert scheduler.get_last_lr() == [0.25]


def test_local_shard_is_the_held_tensor_itself(tmp_path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    plain = torch.ones(2)
    assert compat.local_shard(plain) is plain
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = distribute_tensor(torch.arange(4.0), mesh, [Shard(0)])
        assert compat.local_shard(sharded) is compat.local_shard(sharded)
        assert torch.equal(compat.local_shard(sharded), torch.arange(4.0))
    finally:
        dist.destroy_process_group()


def test_zero3_gradients_are_copied_at_micro_step_zero_and_only_stage_3_is_reset() -> None:
    import inspect
    from types import SimpleNamespace

    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    # The DeepSpeed behaviour the helper relies on: copy at micro_step_id 0, add after.
    assert "if self.micro_step_id == 0:  # don't accumulate" in inspect.getsource(
        DeepSpeedZeroOptimizer_Stage3
    )
    for stage, expected in ((3, 0), (2, 5)):
        engine = SimpleNamespace(
            zero_optimization_stage=lambda s=stage: s, optimizer=SimpleNamespace(micro_step_id=5)
        )
        compat.zero3_copy_next_gradients(engine)
        assert engine.optimizer.micro_step_id == expected


def test_output_cache_uses_the_field_the_output_classes_have() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

    outputs = BaseModelOutputWithPast(last_hidden_state=torch.zeros(1))
    keyword = compat.output_cache(outputs)
    assert list(keyword) == [next(k for k in ("cache", "past_key_values") if k in keyword)]
    assert CausalLMOutputWithPast(**keyword) is not None
