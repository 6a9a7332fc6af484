"""The SLURM launch paths, run with bash against fake ``srun``/``scontrol``/``sbatch``/``pcpretrain``:
``slurm/submit.sh`` builds the sbatch command, ``slurm/train.sbatch`` gives every rank its environment
and requeues after a preemption (exit 75), and the submitit job script of ``hydra/launcher=slurm``
asks for the early signal the training stops on, before submitit's handler requeues the job."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import REPO_ROOT, compose_config

from pcpretrain.slurm_env import master_port

SLURM_DIR = REPO_ROOT / "slurm"
SCRIPTS = sorted(path for path in SLURM_DIR.iterdir() if path.is_file())
CONFIG_DIR = REPO_ROOT / "pcpretrain" / "configs"
PREEMPTED = 75
SETTINGS = ("NODES", "GPUS_PER_NODE", "PARTITION", "TIME", "ACCOUNT", "RUN_DIR", "VENV")
TORCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
FAKES = {
    "srun": """printf '%s\\n' "$*" >> "$FAKE_LOG/srun"
echo "kill-on-bad-exit=${SLURM_KILL_BAD_EXIT:-} cpus-per-task=${SRUN_CPUS_PER_TASK:-}" >> "$FAKE_LOG/srun.env"
[[ -n ${FAKE_TASKS:-} ]] || exit "$FAKE_EXIT"
while [[ $1 == --* ]]; do shift; done
status=0
for ((i = 0; i < FAKE_TASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) "$@" || status=$?
done
exit "$status"
""",
    "scontrol": """case $1 in
show) printf 'gpu003\\ngpu004\\n' ;;
*) echo "$*" >> "$FAKE_LOG/scontrol" ;;
esac
""",
    "pcpretrain": """echo "$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT | $*" \\
    >> "$FAKE_LOG/pcpretrain"
exit "$FAKE_EXIT"
""",
    "sbatch": """printf '%s\\n' "$@" > "$FAKE_LOG/sbatch"
""",
}
SLURM_JOB = {
    "SLURM_JOB_ID": "12345",
    "SLURM_JOB_NAME": "pcpretrain",
    "SLURM_JOB_NODELIST": "gpu[003-004]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_CPUS_PER_TASK": "8",
}


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with the fakes; they log to ``$FAKE_LOG``."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    unset = (*SETTINGS, *TORCH_VARS)
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("SLURM")}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "FAKE_LOG": str(log), "FAKE_EXIT": "0"}


def _log(env: dict[str, str], name: str) -> list[str]:
    path = Path(env["FAKE_LOG"]) / name
    return path.read_text().splitlines() if path.exists() else []


def _submit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["slurm/submit.sh", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_scripts_parse(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_dry_run_prints_the_sbatch_command(fake_env: dict[str, str]) -> None:
    overrides = ["distributed=fsdp", "data.train_files=[a b.jsonl]"]
    result = _submit(
        *("--nodes", "2", "--gpus-per-node=4", "--partition", "gpu", "--time", "12:00:00"),
        *("--account", "proj", "--run-dir", "runs/big", "--dry-run", "--", *overrides),
        env=fake_env,
    )
    assert result.returncode == 0, result.stderr
    line = (
        "sbatch --nodes=2 --gpus-per-node=4 --ntasks-per-node=4 --partition=gpu --time=12:00:00 "
        r"--account=proj --export=ALL\,RUN_DIR=runs/big slurm/train.sbatch distributed=fsdp "
        r"data.train_files=\[a\ b.jsonl\]"
    )
    assert result.stdout == line + "\n"
    assert shlex.split(line)[-3:] == ["slurm/train.sbatch", *overrides]
    assert not _log(fake_env, "sbatch")


def test_settings_default_to_the_environment_and_flags_win(fake_env: dict[str, str]) -> None:
    env = {**fake_env, "NODES": "3", "GPUS_PER_NODE": "2", "PARTITION": "p", "TIME": "60", "ACCOUNT": "a"}
    result = _submit("--dry-run", "--nodes", "5", "model=1B", env={**env, "RUN_DIR": "/runs/x"})
    assert result.stdout.split() == [
        *("sbatch", "--nodes=5", "--gpus-per-node=2", "--ntasks-per-node=2", "--partition=p"),
        *("--time=60", "--account=a", r"--export=ALL\,RUN_DIR=/runs/x", "slurm/train.sbatch", "model=1B"),
    ]
    assert _submit("--dry-run", env=fake_env).stdout == "sbatch slurm/train.sbatch\n"


def test_submit_runs_sbatch(fake_env: dict[str, str]) -> None:
    result = _submit("--nodes", "2", "data.train_files=[a b.jsonl]", env=fake_env)
    assert result.returncode == 0, result.stderr
    assert _log(fake_env, "sbatch") == ["--nodes=2", "slurm/train.sbatch", "data.train_files=[a b.jsonl]"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--bogus"], {}, "unknown option '--bogus'"),
        (["--nodes", "two"], {}, "--nodes (NODES) must be a positive integer, not 'two'"),
        ([], {"GPUS_PER_NODE": "0"}, "--gpus-per-node (GPUS_PER_NODE) must be a positive integer"),
        (["--time"], {}, "option '--time' needs a value"),
    ],
)
def test_submit_rejects_bad_input(
    fake_env: dict[str, str], args: list[str], env: dict[str, str], message: str
) -> None:
    result = _submit("--dry-run", *args, env={**fake_env, **env})
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == ""


def test_help(fake_env: dict[str, str]) -> None:
    result = _submit("--help", env=fake_env)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: slurm/submit.sh")


def test_sbatch_header_asks_for_requeue_and_an_early_signal() -> None:
    directives = re.findall(r"^#SBATCH (\S+)$", (SLURM_DIR / "train.sbatch").read_text(), re.MULTILINE)
    assert "--requeue" in directives
    assert "--open-mode=append" in directives
    assert any(re.fullmatch(r"--signal=USR1@\d+", d) for d in directives)
    assert any(re.fullmatch(r"--output=\S*%j\S*", d) for d in directives)


def _run_sbatch(env: dict[str, str], tmp_path: Path, exit_code: int) -> subprocess.CompletedProcess:
    env = {**env, **SLURM_JOB, "FAKE_TASKS": SLURM_JOB["SLURM_NTASKS"], "FAKE_EXIT": str(exit_code)}
    return subprocess.run(
        ["bash", str(SLURM_DIR / "train.sbatch"), "distributed=ddp", "data.train_files=[a b.jsonl]"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sbatch_gives_every_rank_its_environment(fake_env: dict[str, str], tmp_path: Path) -> None:
    result = _run_sbatch(fake_env, tmp_path, 0)
    assert result.returncode == 0, result.stderr
    port = master_port(int(SLURM_JOB["SLURM_JOB_ID"]))
    args = f"train run.dir={tmp_path}/runs/pcpretrain-12345 distributed=ddp data.train_files=[a b.jsonl]"
    assert _log(fake_env, "pcpretrain") == [
        f"{rank} {rank % 2} 4 2 gpu003 {port} | {args}" for rank in range(4)
    ]
    assert _log(fake_env, "srun")[0].startswith("--kill-on-bad-exit=1 --cpus-per-task=8 bash -c")
    assert not _log(fake_env, "scontrol")


def test_sbatch_requeues_after_preemption(fake_env: dict[str, str], tmp_path: Path) -> None:
    result = _run_sbatch(fake_env, tmp_path, PREEMPTED)
    assert result.returncode == 0, result.stderr
    assert _log(fake_env, "scontrol") == ["requeue 12345"]
    assert "requeueing job 12345" in result.stderr


def test_sbatch_passes_other_failures_through(fake_env: dict[str, str], tmp_path: Path) -> None:
    assert _run_sbatch(fake_env, tmp_path, 3).returncode == 3
    assert not _log(fake_env, "scontrol")


def _launcher_config(run_dir: Path):
    from hydra import compose, initialize_config_dir

    from pcpretrain.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", f"run.dir={run_dir}"],
            return_hydra_config=True,
        )


def test_launcher_config_composes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NODES", "2")
    monkeypatch.setenv("PARTITION", "gpu")
    launcher = _launcher_config(tmp_path / "sweep").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.partition, launcher.account) == (2, "gpu", None)
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8
    assert launcher.submitit_folder == f"{tmp_path / 'sweep'}/.submitit/%j"
    assert launcher.additional_parameters == {"requeue": True}
    assert launcher.max_num_timeout > 0


class _Captured(Exception):
    """Stops a submission once submitit has written its job script."""


def _submitit_job_script(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], run_dir: Path) -> str:
    """The job script the launcher would hand to sbatch for one sweep point."""
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    def capture(executor: SlurmExecutor, command: str, uid: str) -> str:
        raise _Captured(make_text(executor, command, uid))

    make_text = SlurmExecutor._make_submission_file_text
    monkeypatch.setattr(SlurmExecutor, "_make_submission_file_text", capture)
    monkeypatch.setenv("PATH", env["PATH"])  # submitit looks for srun before it submits
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    config = _launcher_config(run_dir)
    launcher = instantiate(config.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=config)
    with pytest.raises(_Captured) as captured:
        launcher.launch([["pc.degree=2"]], initial_job_idx=0)
    return str(captured.value)


def test_sweep_jobs_stop_on_the_signal_that_submitit_requeues_on(
    monkeypatch: pytest.MonkeyPatch, fake_env: dict[str, str], tmp_path: Path
) -> None:
    """The ranks checkpoint on submitit's early signal, then submitit's handler requeues the job."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    script = _submitit_job_script(monkeypatch, fake_env, tmp_path / "sweep")
    signal = SlurmJobEnvironment.USR_SIG
    for directive in ("--requeue", f"--signal={signal}@300", "--nodes=1", "--ntasks-per-node=8"):
        assert f"#SBATCH {directive}\n" in script
    assert f"SIG{signal}" in compose_config().distributed.stop_signals


def test_sweep_job_srun_stops_all_ranks_on_a_failure(
    monkeypatch: pytest.MonkeyPatch, fake_env: dict[str, str], tmp_path: Path
) -> None:
    script = _submitit_job_script(monkeypatch, fake_env, tmp_path / "sweep")
    env = {**fake_env, **SLURM_JOB, "FAKE_EXIT": "3"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr
    assert _log(fake_env, "srun")[0].startswith("--unbuffered")
    assert _log(fake_env, "srun.env") == ["kill-on-bad-exit=1 cpus-per-task=8"]
    assert not _log(fake_env, "scontrol")
