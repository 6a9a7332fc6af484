"""Batched Muon over 2 CPU processes (gloo) equals one process, bit for bit, and launches per depth.

Both data-parallel layouts are covered: replicated parameters (DDP) and ``DTensor`` row shards
(FSDP2's layout, built here with ``distribute_tensor``), eager and with the elementwise work
compiled (equal to the eager single process up to the fused kernels' rounding). The shapes are
mixed, batches are uneven (3 matrices of one shape over 2 ranks, a shape with a single matrix so one
rank has nothing to orthogonalise) and so are the shards (5 rows over 2 ranks, a single row so one
shard is empty).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import is_top_level_op
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.profiler import ProfilerActivity, profile

from pcpretrain.optim.distributed_muon import DistributedMuon
from pcpretrain.optim.muon import Muon

STEPS = 3
NS_DTYPES = ("float32", "bfloat16")
LAYOUTS = ("replicated", "sharded")
DEPTHS = (4, 8)
SHAPES = {
    "in": (40, 24),
    "mid0": (40, 40),
    "mid1": (40, 40),
    "mid2": (40, 40),
    "out": (16, 40),
    "kernel0": (6, 4, 5),
    "kernel1": (6, 4, 5),
    "odd": (5, 7),
    "row": (1, 16),
    "bias": (40,),
    "gain": (16,),
}

Layout = Callable[[Tensor], Tensor]


def plain(tensor: Tensor) -> Tensor:
    return tensor


def mixed_params() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=gen) * 0.1 for name, shape in SHAPES.items()}


def layer_params(depth: int) -> dict[str, Tensor]:
    """``depth`` layers of two matrix shapes and a bias: the batches, not their sizes, are fixed."""
    shapes = {}
    for layer in range(depth):
        shapes.update({f"up{layer}": (32, 16), f"down{layer}": (16, 32), f"bias{layer}": (32,)})
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=gen) * 0.1 for name, shape in shapes.items()}


def make_optimizer(
    optimizer_class: type[Muon],
    start: dict[str, Tensor],
    layout: Layout,
    ns_dtype: str,
    compile_elementwise: bool = False,
) -> tuple[dict[str, nn.Parameter], Muon]:
    params = {name: nn.Parameter(layout(t.clone())) for name, t in start.items()}
    groups = [
        {"params": [p for p in params.values() if p.ndim >= 2], "use_muon": True, "lr": 0.02},
        {"params": [p for p in params.values() if p.ndim < 2], "use_muon": False, "lr": 1e-3},
    ]
    optimizer = optimizer_class(
        groups, weight_decay=0.1, ns_dtype=ns_dtype, compile_elementwise=compile_elementwise
    )
    return params, optimizer


def set_grads(params: dict[str, nn.Parameter], layout: Layout, step: int) -> None:
    """The same gradients on every rank, as data parallelism leaves them after the reduction."""
    gen = torch.Generator().manual_seed(100 + step)
    for p in params.values():
        p.grad = layout(torch.randn(p.shape, generator=gen))


def train(
    optimizer_class: type[Muon],
    layout: Layout,
    ns_dtype: str,
    start: dict[str, Tensor] | None = None,
    compile_elementwise: bool = False,
) -> list[Tensor]:
    params, optimizer = make_optimizer(
        optimizer_class, start or mixed_params(), layout, ns_dtype, compile_elementwise
    )
    for step in range(STEPS):
        set_grads(params, layout, step)
        optimizer.step()
    return [p.full_tensor() if isinstance(p, DTensor) else p.detach().clone() for p in params.values()]


def aten_ops_per_step(optimizer_class: type[Muon], depth: int, layout: Layout) -> int:
    """The aten ops of a step after the first (which creates the state, one tensor at a time)."""
    params, optimizer = make_optimizer(optimizer_class, layer_params(depth), layout, "float32")
    set_grads(params, layout, 0)
    optimizer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        optimizer.step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and is_top_level_op(e))


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        mesh = init_device_mesh("cpu", (world,))

        def sharded(tensor: Tensor) -> Tensor:
            return distribute_tensor(tensor, mesh, [Shard(0)], src_data_rank=None)

        layouts = {"replicated": plain, "sharded": sharded}
        results = {
            (name, ns_dtype): train(DistributedMuon, layout, ns_dtype)
            for name, layout in layouts.items()
            for ns_dtype in NS_DTYPES
        }
        compiled = {
            name: train(DistributedMuon, layout, "float32", mixed_params(), compile_elementwise=True)
            for name, layout in layouts.items()
        }
        ops = {
            (name, depth): aten_ops_per_step(DistributedMuon, depth, layout)
            for name, layout in layouts.items()
            for depth in DEPTHS
        }
        torch.save({"results": results, "compiled": compiled, "ops": ops}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("distributed_muon")
    mp.start_processes(worker, args=(2, str(out / "init"), str(out)), nprocs=2, start_method="fork")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ns_dtype", NS_DTYPES)
def test_two_processes_give_the_single_process_parameters(
    two_ranks: list[dict], layout: str, ns_dtype: str
) -> None:
    single = train(Muon, plain, ns_dtype)
    for rank in two_ranks:
        distributed = rank["results"][(layout, ns_dtype)]
        for name, a, b in zip(SHAPES, distributed, single, strict=True):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compiled_elementwise_work_gives_the_single_process_parameters(
    two_ranks: list[dict], layout: str
) -> None:
    """Each rank compiles for its own slice of directions (replicated) or its shards (sharded)."""
    single = train(Muon, plain, "float32", mixed_params())
    for rank in two_ranks:
        for a, b in zip(rank["compiled"][layout], single, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_distributed_step_launches_do_not_grow_with_depth(two_ranks: list[dict], layout: str) -> None:
    for rank in two_ranks:
        assert rank["ops"][(layout, 4)] == rank["ops"][(layout, 8)]


@pytest.mark.parametrize("optimizer_class", [Muon, DistributedMuon])
def test_step_launches_do_not_grow_with_depth(optimizer_class: type[Muon]) -> None:
    shallow, deep = (aten_ops_per_step(optimizer_class, depth, plain) for depth in DEPTHS)
    assert shallow == deep


def test_without_a_process_group_it_is_plain_muon() -> None:
    for ns_dtype in NS_DTYPES:
        distributed, single = train(DistributedMuon, plain, ns_dtype), train(Muon, plain, ns_dtype)
        assert all(torch.equal(a, b) for a, b in zip(distributed, single, strict=True))
