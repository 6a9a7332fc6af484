#!/bin/bash
# Submit slurm/train.sbatch: options become sbatch flags, the remaining arguments `pcpretrain train`
# overrides. Settings not given keep the defaults of train.sbatch's #SBATCH lines.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: slurm/submit.sh [options] [--] [pcpretrain train overrides...]

Submit a multi-node `pcpretrain train` run (one task per GPU) with sbatch.

options (each falls back to the environment variable named in brackets):
  --nodes N           number of nodes [NODES]
  --gpus-per-node G   GPUs per node, also the tasks per node [GPUS_PER_NODE]
  --partition P       SLURM partition [PARTITION]
  --time T            time limit, in any sbatch --time format [TIME]
  --account A         account to charge [ACCOUNT]
  --run-dir D         run directory; default runs/<job name>-<job id> [RUN_DIR]
  --dry-run           print the sbatch command instead of running it
  -h, --help          show this help

Unset settings keep the #SBATCH defaults of slurm/train.sbatch (1 node, 8 GPUs, 24:00:00).
The job sees this shell's environment, e.g. VENV (a virtual environment to activate).
Re-submitting with the same --run-dir resumes that run from its newest checkpoint.

example:
  slurm/submit.sh --nodes 2 --gpus-per-node 8 --time 12:00:00 -- distributed=fsdp model=1B
EOF
}

die() {
    echo "submit.sh: $*" >&2
    exit 2
}

check_count() {
    [[ -z $2 || $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, not '$2'"
}

nodes="${NODES:-}" gpus_per_node="${GPUS_PER_NODE:-}" partition="${PARTITION:-}" time_limit="${TIME:-}"
account="${ACCOUNT:-}" run_dir="${RUN_DIR:-}" dry_run=0 overrides=()

set_option() {
    [[ -n $2 ]] || die "option '$1' needs a value"
    case $1 in
    --nodes) nodes=$2 ;;
    --gpus-per-node) gpus_per_node=$2 ;;
    --partition) partition=$2 ;;
    --time) time_limit=$2 ;;
    --account) account=$2 ;;
    --run-dir) run_dir=$2 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
}

while (($#)); do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --dry-run) dry_run=1 ;;
    --)
        shift
        overrides+=("$@")
        break
        ;;
    --*=*) set_option "${1%%=*}" "${1#*=}" ;;
    --nodes | --gpus-per-node | --partition | --time | --account | --run-dir)
        (($# >= 2)) || die "option '$1' needs a value"
        set_option "$1" "$2"
        shift
        ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) overrides+=("$1") ;;
    esac
    shift
done

check_count "--nodes (NODES)" "$nodes"
check_count "--gpus-per-node (GPUS_PER_NODE)" "$gpus_per_node"
[[ $run_dir != *,* ]] || die "--run-dir must not contain a comma (sbatch --export splits on commas)"

cmd=(sbatch)
[[ -z $nodes ]] || cmd+=("--nodes=$nodes")
[[ -z $gpus_per_node ]] || cmd+=("--gpus-per-node=$gpus_per_node" "--ntasks-per-node=$gpus_per_node")
[[ -z $partition ]] || cmd+=("--partition=$partition")
[[ -z $time_limit ]] || cmd+=("--time=$time_limit")
[[ -z $account ]] || cmd+=("--account=$account")
[[ -z $run_dir ]] || cmd+=("--export=ALL,RUN_DIR=$run_dir")
cmd+=("$(dirname "${BASH_SOURCE[0]}")/train.sbatch" "${overrides[@]}")

if ((dry_run)); then
    printf -v line '%q ' "${cmd[@]}"
    echo "${line% }"
else
    exec "${cmd[@]}"
fi
