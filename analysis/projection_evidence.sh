#!/usr/bin/env bash
# The projection check of docs/analysis.md: fit alpha/beta on fp32-ps runs at 2, 3, 4 workers
# and predict 6-worker runs. Rounds are interleaved (each round runs every size once) so that
# drifts in a shared machine's load hit every size alike.
#
#   bash analysis/projection_evidence.sh [OUTDIR] [ROUNDS]      (defaults: runs/projection, 4)
#
# Needs `hpcgrad` and the environment's `mpiexec` on PATH. The MPICH settings make waiting
# ranks sleep instead of busy-polling: on a machine with fewer cores than 7 ranks the spinning
# ranks otherwise take the cores from the ranks copying data (docs/analysis.md).
set -euo pipefail
out="${1:-runs/projection}"
rounds="${2:-4}"
mkdir -p "$out"
export OMP_NUM_THREADS=1
export MPIR_CVAR_CH4_PROGRESS_THROTTLE="${MPIR_CVAR_CH4_PROGRESS_THROTTLE:-1}"
export MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT="${MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT:-1}"
export MPIR_CVAR_CH4_CMA_ENABLE="${MPIR_CVAR_CH4_CMA_ENABLE:-1}"
for round in $(seq 1 "$rounds"); do
    for w in 2 3 4 6; do
        mpiexec -n $((w + 1)) hpcgrad train --algorithm fp32-ps --iterations 100 --hidden 1024 \
            --eval-every 0 --overwrite --log "$out/z$round-fp32-ps-w$w.h5" --quiet > /dev/null
        echo "round $round, $w workers done"
    done
done
fit=() holdout=()
for round in $(seq 1 "$rounds"); do
    fit+=("$out/z$round-fp32-ps-w2.h5" "$out/z$round-fp32-ps-w3.h5" "$out/z$round-fp32-ps-w4.h5")
    holdout+=("$out/z$round-fp32-ps-w6.h5")
done
hpcgrad analyze project --fit "${fit[@]}" --holdout "${holdout[@]}" --workers 64 256
