"""The default run directory's name, identical on every rank of one launch.

``run.dir`` defaults to ``runs/<date>_<time>``. Each rank resolves it on its own, so "now" is not
good enough once a launcher starts several processes: they would disagree by a second and write
to different directories. Ranks started by one local launcher (torchrun, accelerate launch) use
the launcher's start time; SLURM tasks use the job id (stable across requeues, so a requeued job
finds its checkpoints); ranks on several nodes without SLURM must be given ``run.dir``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from pcpretrain.errors import ConfigError

RESOLVER = "pcpretrain_run_name"
LOG_RESOLVER = "pcpretrain_log_file"
TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"


def default_run_name(environ: Mapping[str, str] = os.environ) -> str:
    """``<date>_<time>`` of this launch, or ``slurm-<job id>`` inside a SLURM task."""
    if "SLURM_PROCID" in environ and "SLURM_JOB_ID" in environ:
        return f"slurm-{environ.get('SLURM_ARRAY_JOB_ID') or environ['SLURM_JOB_ID']}"
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return datetime.now().strftime(TIME_FORMAT)
    if int(environ.get("LOCAL_WORLD_SIZE", str(world_size))) != world_size:
        raise ConfigError(
            f"{world_size} processes on several nodes: set run.dir=<shared path> so that every rank "
            "writes to the same run directory"
        )
    return datetime.fromtimestamp(process_start_time(os.getppid())).strftime(TIME_FORMAT)


def process_start_time(pid: int) -> float:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; now elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError):
        return datetime.now().timestamp()
    # Field 22 of stat (the 20th after the command name) is the start time in clock ticks since boot.
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def log_file_name(environ: Mapping[str, str] = os.environ) -> str:
    """``train.log`` for rank 0, ``train.rank<N>.log`` for the others, so ranks never share a log file."""
    rank = int(environ.get("RANK") or environ.get("SLURM_PROCID") or "0")
    return "train.log" if rank == 0 else f"train.rank{rank}.log"


def register_run_name_resolver() -> None:
    """``${pcpretrain_run_name:}`` and ``${pcpretrain_log_file:}`` in the config; the run name is
    cached so one process resolves it once."""
    OmegaConf.register_new_resolver(RESOLVER, default_run_name, use_cache=True, replace=True)
    OmegaConf.register_new_resolver(LOG_RESOLVER, log_file_name, replace=True)
