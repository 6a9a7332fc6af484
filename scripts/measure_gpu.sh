#!/usr/bin/env bash
# The GPU measurements behind the README's performance figures, in one go, each step with a time limit
# so one slow step cannot swallow the others. Writes every step's output to <out>/<step>.txt.
#
#   bash scripts/measure_gpu.sh [out-dir]      # default: gpu-measurements/
#
# Steps: the GPU tests; the PC phases and the optimizer step alone (Llama-1B shapes); throughput of
# baseline, pc4, muon and muon-pc2 (one variant per process, so each peak memory is its own); pc4 at 10
# micro-batches; the transform's numerics on the GPU. Needs the package's dependencies importable
# (pytest and pytest-xdist for the first step only).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-measurements}"
mkdir -p "$out"

step() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "   exit $? ; last lines:"
    tail -n 12 "$out/$name.txt" | sed 's/^/   /'
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$out/device.txt" 2>&1
step gpu_tests 240 python -m pytest -q -p no:cacheprovider -n 0 tests/train/test_gpu.py
step pc_step 120 python scripts/bench_pc_step.py --steps 5 --warmup 2
step optimizer 120 python scripts/bench_optimizer.py --steps 5 --warmup 2
for variant in baseline pc4 pc4-bf16 muon muon-gram muon-pc2; do
    step "throughput_$variant" 180 python scripts/bench_throughput.py --variants "$variant" --steps 6 --warmup 3
done
step throughput_10mb 300 python scripts/bench_throughput.py --variants baseline pc4 pc4-bf16 --micro-batches 10 --steps 4 --warmup 2
step numerics 120 python scripts/pc_numerics.py
