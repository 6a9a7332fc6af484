"""Under DeepSpeed ZeRO-3 the chunked loss head gathers its partitioned weight like a plain projection.

The loss is computed in the head's own forward, so ZeRO-3's per-module hooks gather ``lm_head.weight``
for that forward and its backward. The persistence threshold is 0 here so that even a tiny head is
partitioned (by default ZeRO-3 keeps parameters under 1e5 elements whole, which would hide a missed
gather). 2 CPU processes (gloo) see the same windows, so their averaged gradient is the unsharded one.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
from deepspeed.utils import safe_get_full_grad

from pcpretrain import pc
from pcpretrain.choices import DEFAULT_PC_TARGETS
from pcpretrain.config import ModelConfig
from pcpretrain.model import build_model
from pcpretrain.train.loss import causal_lm_loss

VOCAB = 96
MODEL = ModelConfig(hidden_size=32, intermediate_size=80, num_layers=2, num_heads=4, max_seq_len=64)
WINDOWS = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(0))
CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "zero_allow_untested_optimizer": True,
    "steps_per_print": 2**31 - 1,
}


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # DeepSpeed reads them
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.save(_losses_and_grads(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _losses_and_grads() -> dict:
    torch.manual_seed(0)
    model = build_model(MODEL, VOCAB)
    pc.apply_pc(model, 2, DEFAULT_PC_TARGETS, power_iters=10, seed=0)
    reference = copy.deepcopy(model)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config=CONFIG
    )
    head = engine.module.lm_head.weight
    partitioned = head.ds_status == ZeroParamStatus.NOT_AVAILABLE and head.numel() == 0
    loss = causal_lm_loss(engine, WINDOWS, chunk_tokens=7)
    engine.backward(loss)
    grads = {name: safe_get_full_grad(p).clone() for name, p in engine.module.named_parameters()}
    reference_loss = causal_lm_loss(reference, WINDOWS, chunk_tokens=0)
    reference_loss.backward()
    return {
        "partitioned": partitioned,
        "loss": (loss.item(), reference_loss.item()),
        "grads": grads,
        "reference_grads": {name: p.grad for name, p in reference.named_parameters()},
    }


def test_zero3_partitioned_head_gives_the_unsharded_loss_and_gradients(tmp_path: Path) -> None:
    mp.start_processes(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["partitioned"]
        loss, reference_loss = result["loss"]
        assert abs(loss - reference_loss) < 1e-6
        assert result["grads"].keys() == result["reference_grads"].keys()
        for name, grad in result["reference_grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
