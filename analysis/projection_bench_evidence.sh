#!/usr/bin/env bash
# The flat-exchange check of docs/analysis.md's topology section: `hpcgrad bench exchange` at
# 3, 5 and 9 ranks (fp32-ps and signum-mv, and the fp32 Allreduce it always runs), in
# interleaved rounds; fit on 3 and 5 ranks, predict 9.
#
#   bash analysis/projection_bench_evidence.sh [OUTDIR] [ROUNDS] [PARAMS]
#                                              (defaults: runs/projection-bench, 3, 6M)
#
# Needs `hpcgrad` and the environment's `mpiexec` on PATH. As projection_evidence.sh, the
# MPICH settings make waiting ranks sleep instead of busy-polling (docs/analysis.md); runs at
# nice 15 to leave a shared machine's cores to interactive work.
set -euo pipefail
out="${1:-runs/projection-bench}"
rounds="${2:-3}"
params="${3:-6M}"
mkdir -p "$out"
export OMP_NUM_THREADS=1
export MPIR_CVAR_CH4_PROGRESS_THROTTLE="${MPIR_CVAR_CH4_PROGRESS_THROTTLE:-1}"
export MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT="${MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT:-1}"
export MPIR_CVAR_CH4_CMA_ENABLE="${MPIR_CVAR_CH4_CMA_ENABLE:-1}"
for round in $(seq 1 "$rounds"); do
    for p in 3 5 9; do
        nice -n 15 mpiexec -n "$p" hpcgrad bench exchange --params "$params" \
            --algorithm fp32-ps --algorithm signum-mv --repeat 12 --warmup 3 --no-micro \
            --json "$out/t$round-p$p.json" > /dev/null
        echo "round $round, $p ranks done"
    done
done
fit=() holdout=()
for round in $(seq 1 "$rounds"); do
    fit+=("$out/t$round-p3.json" "$out/t$round-p5.json")
    holdout+=("$out/t$round-p9.json")
done
hpcgrad analyze project --fit "${fit[@]}" --holdout "${holdout[@]}"
