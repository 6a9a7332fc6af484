"""Data-parallel Muon over 2 CPU processes (gloo) equals one process, bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pcpretrain.optim.distributed_muon import DistributedMuon
from pcpretrain.optim.muon import Muon

STEPS = 3


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.Linear(40, 40), nn.Linear(40, 16), nn.LayerNorm(16))


def param_groups(model: nn.Module) -> list[dict]:
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": matrices, "use_muon": True, "lr": 0.02, "weight_decay": 0.1},
        {"params": others, "use_muon": False, "lr": 1e-3, "weight_decay": 0.0},
    ]


def train(optimizer_class: type[Muon]) -> list[torch.Tensor]:
    """The same gradients on every rank, as data parallelism leaves them after the all-reduce."""
    model = make_model()
    optimizer = optimizer_class(param_groups(model), ns_dtype="float32")
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(100 + step)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.save(train(DistributedMuon), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_single_process_parameters(tmp_path: Path) -> None:
    mp.start_processes(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    single = train(Muon)
    for rank in range(2):
        distributed = torch.load(tmp_path / f"rank{rank}.pt")
        assert all(torch.equal(a, b) for a, b in zip(distributed, single, strict=True))


def test_without_a_process_group_it_is_plain_muon() -> None:
    assert all(torch.equal(a, b) for a, b in zip(train(DistributedMuon), train(Muon), strict=True))
