"""Torch's distributed variables from SLURM's: filled only for one task of a multi-task step."""

from __future__ import annotations

import pytest

from pcpretrain.slurm_env import export_torch_env_from_slurm, master_port

TWO_NODES = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "gpu[003-004]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NTASKS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
}


def test_one_task_of_two_nodes_joins_the_group() -> None:
    environ = dict(TWO_NODES)
    assert export_torch_env_from_slurm(environ)
    assert {k: environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
    }
    assert environ["MASTER_ADDR"] == "gpu003"
    assert environ["MASTER_PORT"] == str(master_port(4242)) == "24242"


def test_step_nodes_and_derived_tasks_per_node() -> None:
    environ = {k: v for k, v in TWO_NODES.items() if k != "SLURM_NTASKS_PER_NODE"}
    environ["SLURM_STEP_NODELIST"] = "node7,gpu[003-004]"
    assert export_torch_env_from_slurm(environ)
    assert (environ["MASTER_ADDR"], environ["LOCAL_WORLD_SIZE"]) == ("node7", "4")


def test_a_chosen_rendezvous_is_kept() -> None:
    environ = {**TWO_NODES, "MASTER_ADDR": "head", "MASTER_PORT": "29500"}
    assert export_torch_env_from_slurm(environ)
    assert (environ["MASTER_ADDR"], environ["MASTER_PORT"]) == ("head", "29500")


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {**TWO_NODES, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},
        {**TWO_NODES, "RANK": "2"},
        {k: v for k, v in TWO_NODES.items() if k != "SLURM_PROCID"},
    ],
    ids=["no-slurm", "single-task", "rank-already-set", "batch-script"],
)
def test_left_untouched(environ: dict[str, str]) -> None:
    before = dict(environ)
    assert not export_torch_env_from_slurm(environ)
    assert environ == before


def test_master_port_range() -> None:
    assert {master_port(job_id) for job_id in (0, 19999, 20000, 123456789)} <= set(range(20000, 40000))
