"""A mixed run: under real ``mpiexec -n 3``, worker 2 (rank 2) runs the device-side worker
steps (hpcgrad/compression/on_device.py) on NumPy arrays -- forced by the test-only
``HPCGRAD_TEST_XP_WORKER=1``, set for that rank alone through an MPMD launch -- while the
server and worker 1 run the CPU path.  The run must end with the replica check passing (exit
0) and log exactly the bytes the golden recordings hold for the same settings
(tests/golden_runs.json): every recorded message, per-step column, eval and the final
parameters' hash.  A GPU worker runs the same code with CuPy arrays.  Three cases (about 30 s
each on 2 cores); ef-sgd's is step-ahead with error averaging (the model moved to x - e and
back, the residual averaged with the CPU workers'); qsgd / dq-sgd / terngrad and ef-sgd's
other compressors are checked byte for byte without MPI (tests/algorithms/test_on_device.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpirun import mpi_env, mpiexec_path
from test_golden_runs import CASES, GOLDEN, RUN_PART_ATTRS, digests

#: The golden settings (test_golden_runs's), as command-line flags.
BASE = {"iterations": 6, "eval_every": 3, "flush_every": 4, "hidden": 32, "batch_size": 16,
        "seed": 11, "record_messages": 6}


def flags(settings) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


@pytest.mark.parametrize("case", ["s3gd-mv-threshold", "topk-aggregate-hint-fp16",
                                  "ef-sgd-scaled-sign-step-ahead-averaging"])
def test_a_worker_on_the_device_path_sends_the_recorded_bytes(tmp_path, case):
    log = tmp_path / f"{case}.h5"
    args = ["-m", "mpi4py", "-m", "hpcgrad", "train", "--quiet", "--log", str(log),
            *flags({**BASE, **CASES[case]})]
    command = [mpiexec_path(), "-n", "2", sys.executable, *args, ":",
               "-n", "1", "-env", "HPCGRAD_TEST_XP_WORKER", "1", sys.executable, *args]
    done = subprocess.run(command, env=mpi_env(), capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    got, want = digests(log), json.loads(GOLDEN.read_text())[f"{case}@3"]
    assert got.pop("run_part") == RUN_PART_ATTRS
    assert got["final_params_sha256"] == want["final_params_sha256"]
    assert got["messages"] == want["messages"]
    assert got["steps"] == want["steps"]
    assert got["eval"] == want["eval"]
