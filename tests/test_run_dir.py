"""The default run directory name agrees across the ranks of one launch."""

from __future__ import annotations

import os
import re
import time

import pytest

from pcpretrain.config import ConfigError
from pcpretrain.run_dir import default_run_name, log_file_name, process_start_time

STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")


def test_one_process_uses_the_current_time() -> None:
    assert STAMP.match(default_run_name({}))


def test_local_ranks_use_their_launcher_start_time() -> None:
    environ = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}
    name = default_run_name(environ)
    assert STAMP.match(name)
    time.sleep(1.1)
    assert default_run_name(environ) == name  # a rank starting a second later agrees


def test_slurm_tasks_use_the_job_id_so_requeued_jobs_find_their_run() -> None:
    assert default_run_name({"SLURM_PROCID": "3", "SLURM_JOB_ID": "4321", "WORLD_SIZE": "8"}) == "slurm-4321"
    array_task = {"SLURM_PROCID": "0", "SLURM_JOB_ID": "4322", "SLURM_ARRAY_JOB_ID": "4300"}
    assert default_run_name(array_task) == "slurm-4300"


def test_several_nodes_without_slurm_must_name_the_run_dir() -> None:
    with pytest.raises(ConfigError, match=r"set run.dir=<shared path>"):
        default_run_name({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"})


def test_each_rank_logs_to_its_own_file() -> None:
    assert log_file_name({}) == "train.log"
    assert log_file_name({"RANK": "0"}) == "train.log"
    assert log_file_name({"RANK": "3"}) == "train.rank3.log"
    assert log_file_name({"SLURM_PROCID": "2"}) == "train.rank2.log"


def test_process_start_time_is_in_the_past() -> None:
    started = process_start_time(os.getpid())
    assert time.time() - 24 * 3600 < started <= time.time() + 1
