#!/usr/bin/env bash
# The GPU measurements behind the README's performance figures, each with a time limit so one slow
# measurement cannot swallow the others. Writes each one's output to <out>/<name>.txt.
#
#   bash scripts/measure_gpu.sh [out-dir] [name ...]    # default: gpu-measurements/, every name below
#
# Names, roughly in order of cost on one H100 (Llama-1B shapes):
#   table                   the issue's target table and nothing else, in about 5 minutes (one call on a
#                           lent machine): baseline, pc4, muon, muon-pc2 at 4 micro-batches, then
#                           muon-eager (whether compiled Muon pays), then baseline and pc4 at 10
#                           (table_4mb.txt, table_10mb.txt; each row is printed as its variant ends)
#   pc_step, pc_step_tf32   the PC phases alone (bench_pc_step.py), as training runs them (bf16
#                           products) and with every product in TF32 (pc.bf16_products=false)
#   pc_step_whole           as pc_step, with the symmetric products whole instead of in strips
#   pc_step_eager           as pc_step, with transposing copies and symmetric sums eager, not in tiled kernels
#   optimizer               AdamW and Muon (standard or Gram Newton-Schulz, eager or compiled), the step alone
#   optimizer_whole         as optimizer, with the symmetric products whole instead of in strips
#   optimizer_eager         as optimizer, with the strips' transposing copies eager, not in tiled kernels
#   optimizer_elementwise   Muon's momentum, directions and update alone (Newton-Schulz skipped), eager
#                           against compiled: what optimizer.compile (on by default on GPUs) saves
#   numerics                the transform's error against float64 on the GPU (pc_numerics.py)
#   throughput              baseline, pc4, pc4-tf32, muon, muon-eager, muon-standard, muon-pc2,
#                           muon-pc2-eager side by side, 4 micro-batches: the issue's table with and
#                           without each fast option (about 30 s a variant on an H100, more with compile)
#   throughput_whole        baseline, pc4, muon with the symmetric products whole instead of in strips
#   throughput_eager        baseline, pc4, muon with transposing copies and sums eager, not in tiled kernels
#   profile                 one profiled step of baseline, pc4, muon, muon-pc2:
#                           <out>/profile/<variant>/top_ops_*.txt, time per step phase, then top ops
#                           (the traces are deleted: too large to bring back from a lent machine)
#   throughput_10mb         baseline, pc4, pc4-tf32 at 10 micro-batches
#   gpu_tests               tests/train/test_gpu.py (needs pytest and pytest-xdist)
# A variant's peak memory is its own only if "start GiB" reads ~0 in the throughput tables; otherwise
# measure memory one variant per process (bench_throughput.py --variants <one>).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-measurements}"
shift || true
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(throughput throughput_whole throughput_eager profile throughput_10mb pc_step
    pc_step_whole pc_step_eager pc_step_tf32 optimizer optimizer_whole optimizer_eager optimizer_elementwise
    numerics gpu_tests)
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$out/device.txt" 2>&1

run() {
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "   exit $?; last lines:"
    tail -n 14 "$out/$name.txt" | sed 's/^/   /'
}

for name in "${names[@]}"; do
    case "$name" in
        table)
            run table_4mb 330 python scripts/bench_throughput.py --steps 4 --warmup 2 --variants baseline \
                pc4 muon muon-pc2 muon-eager
            run table_10mb 200 python scripts/bench_throughput.py --steps 3 --warmup 2 --micro-batches 10 \
                --variants baseline pc4 ;;
        pc_step) run "$name" 120 python scripts/bench_pc_step.py --steps 5 --warmup 2 ;;
        pc_step_tf32) run "$name" 120 python scripts/bench_pc_step.py --steps 5 --warmup 2 --no-bf16-products ;;
        pc_step_whole) run "$name" 120 python scripts/bench_pc_step.py --steps 5 --warmup 2 --symmetric-strips 1 ;;
        pc_step_eager) run "$name" 120 python scripts/bench_pc_step.py --steps 5 --warmup 2 --eager-transposes ;;
        optimizer) run "$name" 240 python scripts/bench_optimizer.py --steps 5 --warmup 2 ;;
        optimizer_whole)
            run "$name" 240 python scripts/bench_optimizer.py --steps 5 --warmup 2 --symmetric-strips 1 ;;
        optimizer_eager)
            run "$name" 240 python scripts/bench_optimizer.py --steps 5 --warmup 2 --eager-transposes ;;
        optimizer_elementwise)
            run "$name" 240 python scripts/bench_optimizer.py --steps 5 --warmup 2 --elementwise-only ;;
        numerics) run "$name" 120 python scripts/pc_numerics.py ;;
        throughput)
            run "$name" 480 python scripts/bench_throughput.py --steps 4 --warmup 2 --variants baseline \
                pc4 pc4-tf32 muon muon-eager muon-standard muon-pc2 muon-pc2-eager ;;
        throughput_whole)
            run "$name" 300 python scripts/bench_throughput.py --steps 4 --warmup 2 --symmetric-strips 1 \
                --variants baseline pc4 muon ;;
        throughput_eager)
            run "$name" 300 python scripts/bench_throughput.py --steps 4 --warmup 2 --eager-transposes \
                --variants baseline pc4 muon ;;
        profile)
            run "$name" 240 python scripts/bench_throughput.py --steps 1 --warmup 2 \
                --variants baseline pc4 muon muon-pc2 --profile "$out/profile"
            find "$out/profile" -name 'trace_*.json' -delete ;;
        throughput_10mb)
            run "$name" 240 python scripts/bench_throughput.py --steps 3 --warmup 2 --micro-batches 10 \
                --variants baseline pc4 pc4-tf32 ;;
        gpu_tests) run "$name" 240 python -m pytest -q -p no:cacheprovider -n 0 tests/train/test_gpu.py ;;
        *) echo "unknown measurement $name" >&2 ;;
    esac
done
