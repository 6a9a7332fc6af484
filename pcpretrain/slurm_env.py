"""Torch's distributed environment variables derived from SLURM's, for tasks that srun starts directly.

``slurm/train.sbatch`` sets RANK and its companions itself, but a submitit job (``hydra/launcher=slurm``)
or a bare ``srun pcpretrain train`` starts one task per GPU that carries only SLURM's variables;
without torch's, every task would train alone instead of joining one process group.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def master_port(job_id: int) -> int:
    """The rendezvous port: every task of a job derives the same one, and jobs sharing a node differ.

    ``slurm/train.sbatch`` applies the same rule, so both launch paths behave alike.
    """
    return 20000 + job_id % 20000


def export_torch_env_from_slurm(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Fill RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT from SLURM's task
    variables when this process is one task of a multi-task SLURM step and no launcher set RANK.

    MASTER_ADDR and MASTER_PORT already set are kept. Returns whether anything was filled; a single
    task, or a process whose launcher already set RANK, is left untouched.
    """
    if "RANK" in environ or "SLURM_PROCID" not in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    from submitit.slurm.slurm import _parse_node_list  # SLURM's compressed host lists, e.g. gpu[003-004]

    world_size = int(environ["SLURM_NTASKS"])
    nodes = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or str(
        world_size // int(environ.get("SLURM_JOB_NUM_NODES", "1"))
    )
    environ.update(
        RANK=environ["SLURM_PROCID"],
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=environ.get("SLURM_LOCALID", "0"),
        LOCAL_WORLD_SIZE=per_node,
    )
    environ.setdefault("MASTER_ADDR", _parse_node_list(nodes)[0])
    environ.setdefault("MASTER_PORT", str(master_port(int(environ["SLURM_JOB_ID"]))))
    return True
