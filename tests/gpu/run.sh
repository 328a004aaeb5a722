#!/usr/bin/env bash
# The GPU checks of issue 16, for a session with a GPU (prepared without one; never run yet).
#
#   OUT=/some/dir tests/gpu/run.sh        # from the repository root, the environment active
#
# 1. versions: GPU model, driver, CUDA, CuPy, torch  -> $OUT/versions.txt
# 2. the GPU tests (tests/gpu/, tests/comm/test_device.py)  -> $OUT/pytest.txt
# 3. every algorithm (and each ef-sgd compressor) under `mpiexec -n 3` with all ranks sharing
#    the one GPU: once with --device cuda, once on the CPU, same seed; each run must end with
#    the replica check (exit 0) and log the same bytes  -> $OUT/compare.txt, $OUT/runs/
#    Algorithms that still refuse --device cuda are listed as REFUSED with their one line.
set -u
OUT=${OUT:?set OUT to a directory for the results}
mkdir -p "$OUT/runs"
export OMP_NUM_THREADS=1 MPIR_CVAR_ENABLE_HEAVY_YIELD=1
PY=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" -c 'import torch, cupy, numpy; print("torch", torch.__version__, "cuda", torch.version.cuda);
print("cupy", cupy.__version__, "runtime", cupy.cuda.runtime.runtimeGetVersion()); print("numpy", numpy.__version__)' 2>&1
} > "$OUT/versions.txt"

timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/gpu tests/comm/test_device.py \
  > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest.txt"

COMMON="--iterations 6 --eval-every 3 --hidden 32 --batch-size 16 --seed 11 --record-messages 6 --quiet"
CASES=(
  "s3gd-mv|--algorithm s3gd-mv"
  "s3gd-mv-threshold|--algorithm s3gd-mv --selection threshold --sparsity 0.05"
  "s3gd-mv-momentum-wd|--algorithm s3gd-mv --momentum 0.9 --weight-decay 0.001"
  "topk|--algorithm topk"
  "topk-union-boost|--algorithm topk --topk-selection union-boost"
  "topk-aggregate-hint-fp16|--algorithm topk --topk-selection aggregate-hint --topk-values fp16"
  "topk-shared-random-unbiased|--algorithm topk --topk-selection shared-random --unbiased"
  "topk-leader|--algorithm topk --topk-selection leader"
  "signum-mv|--algorithm signum-mv"
  "fp32-ps|--algorithm fp32-ps"
  "qsgd|--algorithm qsgd"
  "dq-sgd|--algorithm dq-sgd"
  "terngrad|--algorithm terngrad"
  "ef-sgd-scaled-sign|--algorithm ef-sgd --compressor scaled-sign"
  "ef-sgd-topk|--algorithm ef-sgd --compressor topk"
  "ef-sgd-randomk|--algorithm ef-sgd --compressor randomk"
  "ef-sgd-qsgd|--algorithm ef-sgd --compressor qsgd"
  "ef-sgd-identity|--algorithm ef-sgd --compressor identity"
  "ef-sgd-topk-none|--algorithm ef-sgd --compressor topk --feedback none"
  "ef-sgd-step-ahead-wd-averaging|--algorithm ef-sgd --feedback step-ahead --weight-decay 0.001 --error-averaging 2"
  "ef-sgd-server-feedback|--algorithm ef-sgd --compressor topk --server-feedback"
  "terngrad-no-clip|--algorithm terngrad --terngrad-clip 0"
)
: > "$OUT/compare.txt"
for entry in "${CASES[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  for device in cpu cuda; do
    timeout 120 "$MPIEXEC" -n 3 "$PY" -m mpi4py -m hpcgrad train $COMMON $args \
      --device $device --log "$OUT/runs/$name-$device.h5" \
      > "$OUT/runs/$name-$device.txt" 2>&1
    echo "rc=$?" >> "$OUT/runs/$name-$device.txt"
  done
  if ! grep -q '^rc=0$' "$OUT/runs/$name-cuda.txt"; then
    echo "$name: REFUSED or FAILED on cuda: $(grep -v '^rc=' "$OUT/runs/$name-cuda.txt" | tail -1)" \
      >> "$OUT/compare.txt"
    continue
  fi
  (cd tests && "$PY" - "$OUT/runs/$name-cpu.h5" "$OUT/runs/$name-cuda.h5" "$name" <<'PY'
import sys
from test_golden_runs import digests
cpu, gpu = digests(sys.argv[1]), digests(sys.argv[2])
same = [p for p in ("final_params_sha256", "messages", "steps", "eval") if cpu.get(p) == gpu.get(p)]
moved = [p for p in ("final_params_sha256", "messages", "steps", "eval") if p not in same]
print(f"{sys.argv[3]}: {'SAME BYTES' if not moved else 'DIFFERENT: ' + ', '.join(moved)}")
for part in ("messages", "steps"):
    for k in sorted(set(cpu.get(part, {})) | set(gpu.get(part, {}))):
        if cpu.get(part, {}).get(k) != gpu.get(part, {}).get(k):
            print(f"    {part}/{k} differs")
PY
  ) >> "$OUT/compare.txt" 2>&1
done
cat "$OUT/versions.txt" "$OUT/compare.txt"
tail -3 "$OUT/pytest.txt"
