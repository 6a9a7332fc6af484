"""PC layers and Muon on FSDP2-sharded parameters (2 CPU processes, gloo) against the unsharded model.

accelerate runs FSDP2 only on GPUs, so these tests shard with torch's ``fully_shard`` directly, the
call accelerate makes per decoder layer; the same code paths (DTensor parameters, whole-matrix
views, sharded checkpoints) are exercised.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from pcpretrain import pc
from pcpretrain.checkpoint_weights import DistributedCheckpointWeights, layer_groups
from pcpretrain.config import ModelConfig, OptimizerConfig
from pcpretrain.model import build_model
from pcpretrain.optim import build_optimizer
from pcpretrain.sharding import full_stack, full_tensor, local_like, own_slice_stack
from pcpretrain.train.loss import causal_lm_loss

VOCAB = 96
MODEL = ModelConfig(hidden_size=32, intermediate_size=80, num_layers=2, num_heads=4, max_seq_len=64)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(MODEL, VOCAB)
    # Only layer 0's o_proj: a shape group of one, of which rank 1 owns no slice yet joins every gather.
    targets = ["*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj", "*.layers.0.self_attn.o_proj"]
    pc.apply_pc(model, 2, targets, power_iters=10, seed=0)
    return model


def windows(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(step))


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        _compare_with_unsharded(rank, Path(out_dir))
    finally:
        dist.destroy_process_group()


def _compare_with_unsharded(rank: int, out: Path) -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    weight = model.model.layers[0].mlp.up_proj.weight
    assert isinstance(weight, DTensor) and weight.to_local().shape[0] < weight.shape[0]

    optimizer = build_optimizer(model, OptimizerConfig(name="muon", ns_dtype="float32", lr=0.02))
    reference_optimizer = build_optimizer(
        reference, OptimizerConfig(name="muon", ns_dtype="float32", lr=0.02)
    )
    # The per-step PC path: W_eff by slices of each shape's stack, gradients back as each rank's shard.
    pc_step, reference_step = pc.PCStep(model), pc.PCStep(reference)
    losses = []
    for step in range(3):
        # The same windows on both ranks: FSDP's averaged gradient equals the unsharded one.
        pc_step.begin()
        reference_step.begin()
        loss, reference_loss = causal_lm_loss(model, windows(step)), causal_lm_loss(reference, windows(step))
        loss.backward()
        reference_loss.backward()
        pc_step.finish()
        reference_step.finish()
        gamma_grad = model.model.layers[0].mlp.up_proj.pc_gamma.grad
        assert isinstance(gamma_grad, DTensor) and isinstance(weight.grad, DTensor)
        losses.append((loss.item(), reference_loss.item()))
        for opt in (optimizer, reference_optimizer):
            opt.step()
            opt.zero_grad()
        pc_step.update_spectral()
        reference_step.update_spectral()

    sharded_params = {name: full_tensor(p) for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers() if ".pc_" in name}
    torch.save(
        {
            "losses": losses,
            "params": sharded_params,
            "reference_params": {name: p.detach() for name, p in reference.named_parameters()},
            "buffers": buffers,
            "reference_buffers": {name: b for name, b in reference.named_buffers() if ".pc_" in name},
            "stats": tuple(
                {key: float(value) for key, value in step.statistics().items()}
                for step in (pc_step, reference_step)
            ),
            "local_like_roundtrip": torch.equal(
                local_like(weight, full_tensor(weight)).to_local(), weight.to_local()
            ),
            # Each rank's own slice, redistributed, equals that slice of the whole gathered stack, also
            # when both are asked for in bf16 (the shards are then converted before they move).
            "own_slices": [
                torch.equal(
                    own_slice_stack(params, rank, dist.get_world_size(), dtype),
                    full_stack(params, group.start, group.end, dtype),
                )
                and torch.equal(
                    full_stack(params, group.start, group.end, dtype),
                    full_stack(params, group.start, group.end).to(dtype),
                )
                for group in pc_step.groups
                for params in ([m.weight for m in group.modules], [m.pc_gamma for m in group.modules])
                for dtype in (torch.float32, torch.bfloat16)
            ],
        },
        out / f"rank{rank}.pt",
    )
    import torch.distributed.checkpoint as dcp

    # The layout accelerate's FSDP2 save_state writes: {"model": sharded state dict}.
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(out / "dcp"))


def test_fsdp2_sharded_pc_model_with_muon_matches_the_unsharded_model(tmp_path: Path) -> None:
    mp.start_processes(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for result in ranks:
        assert result["local_like_roundtrip"]
        assert result["own_slices"] and all(result["own_slices"])
        for loss, reference_loss in result["losses"]:
            assert abs(loss - reference_loss) < 1e-5
        for name, tensor in result["reference_params"].items():
            torch.testing.assert_close(result["params"][name], tensor, rtol=1e-5, atol=1e-6)
        for name, tensor in result["reference_buffers"].items():
            torch.testing.assert_close(result["buffers"][name], tensor, rtol=1e-5, atol=1e-6)
        sharded_stats, reference_stats = result["stats"]
        assert sharded_stats.keys() == reference_stats.keys()
        for key, value in reference_stats.items():
            assert abs(sharded_stats[key] - value) < 1e-5
    # u, v agree bit for bit across ranks after every update.
    for name, tensor in ranks[0]["buffers"].items():
        assert torch.equal(tensor, ranks[1]["buffers"][name])

    # The sharded checkpoint reads back, group by group and without a process group, as whole tensors.
    weights = DistributedCheckpointWeights(tmp_path / "dcp")
    names = weights.names()
    assert {n for n in names if ".pc_" not in n} == set(ranks[0]["params"]) - {
        n for n in ranks[0]["params"] if ".pc_" in n
    }
    groups = layer_groups(names)
    assert [g[0].split(".")[2] for g in groups[1:]] == ["0", "1"]
    assert sorted(n for g in groups for n in g) == sorted(names)
    for group in groups:
        for name, tensor in weights.load(group).items():
            expected = ranks[0]["params"].get(name, ranks[0]["buffers"].get(name))
            assert torch.equal(tensor, expected), name
