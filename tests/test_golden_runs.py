"""Same seed, same world, same algorithm => same bytes: a regression net for refactors.

Each case below trains the embedded task for a few steps with every uplink and downlink
recorded, and compares digests of what the HDF5 log holds (the recorded messages, the
per-step traffic and loss columns, the evals, the run attributes that describe the
algorithm, ``final_params_sha256``) with ``tests/golden_runs.json``.  The file was written
by this test (``HPCGRAD_RECORD_GOLDEN=1``) from the code before the architecture refactor
(issue 15); a refactor that changes a byte of any message, a logged column or the final
model fails here, naming the case and the part that moved.

Phase times (``steps/time_*``) differ from run to run and are not compared; neither are the
attributes that name the machine, the versions or the time of the run.

Record again (only when a change of bytes is intended, and say so in the commit):

    HPCGRAD_RECORD_GOLDEN=1 mpiexec -n 3 python -m mpi4py -m pytest --with-mpi -m mpi \
        tests/test_golden_runs.py   # and -n 5
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from hpcgrad.training import runtime
from hpcgrad.training.config import TrainConfig

pytestmark = pytest.mark.mpi(min_size=3)

GOLDEN = Path(__file__).with_name("golden_runs.json")
RECORD = os.environ.get("HPCGRAD_RECORD_GOLDEN") == "1"

#: Attributes that describe the machine, the versions or this particular run, not the bytes.
VOLATILE_ATTRS = {"created", "log_path", "hostnames", "hpcgrad_version", "torch_version",
                  "numpy_version", "mpi_library", "mpi_version", "config", "cuda_aware",
                  "devices", "phases", "run_id", "created_unix", "mpi_waits"}
#: A fresh run's place in a run of resumed parts (issue 23): checked to be the first part,
#: from step 0, rather than compared with the recordings, which predate them.
RUN_PART_ATTRS = {"part": "0", "first_step": "0"}
#: Attributes added to some algorithms' logs after the recordings (issue 21: ef-sgd logs the
#: tensor sizes and K_l a decoder needs).  They describe the run, not its bytes, and are
#: compared only where a recording has them; every recorded attribute is still compared.
ATTRS_ADDED_SINCE_RECORDING = {"segments", "k_per_segment"}

#: name -> settings; every algorithm and every option that changes the bytes on the wire.
CASES = {
    "signum-mv": {},
    "signum-mv-tie-zero": {"tie": "zero"},
    "signum-mv-tie-random-wd": {"tie": "random", "weight_decay": 1e-3},
    "signum-mv-invert": {"adversaries": 1, "attack": "invert"},
    "signum-mv-cosine": {"lr_schedule": "cosine", "warmup": 2},
    "s3gd-mv": {"algorithm": "s3gd-mv"},
    "s3gd-mv-threshold": {"algorithm": "s3gd-mv", "selection": "threshold", "sparsity": 0.05},
    "s3gd-mv-no-residual-auto-k": {"algorithm": "s3gd-mv", "residual": 0.0,
                                   "k_per_worker": "auto"},
    "s3gd-mv-random-attack": {"algorithm": "s3gd-mv", "adversaries": 1, "attack": "random"},
    "topk-local": {"algorithm": "topk"},
    "topk-union-boost": {"algorithm": "topk", "topk_selection": "union-boost"},
    "topk-aggregate-hint-fp16": {"algorithm": "topk", "topk_selection": "aggregate-hint",
                                 "topk_values": "fp16"},
    "topk-shared-random-unbiased": {"algorithm": "topk", "topk_selection": "shared-random",
                                    "unbiased": True},
    "topk-leader": {"algorithm": "topk", "topk_selection": "leader"},
    "topk-invert": {"algorithm": "topk", "adversaries": 1},
    "qsgd": {"algorithm": "qsgd"},
    "qsgd-2bit-quantized-downlink": {"algorithm": "qsgd", "bits": 2,
                                     "quantize_downlink": True},
    "qsgd-random-attack": {"algorithm": "qsgd", "adversaries": 1, "attack": "random"},
    "dq-sgd": {"algorithm": "dq-sgd"},
    "dq-sgd-window": {"algorithm": "dq-sgd", "dq_window": 3, "min_bits": 3, "max_bits": 6},
    "ef-sgd-scaled-sign": {"algorithm": "ef-sgd"},
    "ef-sgd-scaled-sign-step-ahead-averaging": {"algorithm": "ef-sgd", "feedback": "step-ahead",
                                                "error_averaging": 2},
    "ef-sgd-topk-server-feedback": {"algorithm": "ef-sgd", "compressor": "topk",
                                    "server_feedback": True},
    "ef-sgd-randomk-none": {"algorithm": "ef-sgd", "compressor": "randomk", "feedback": "none"},
    "ef-sgd-qsgd-step-ahead-wd": {"algorithm": "ef-sgd", "compressor": "qsgd",
                                  "feedback": "step-ahead", "weight_decay": 1e-3},
    "ef-sgd-identity": {"algorithm": "ef-sgd", "compressor": "identity"},
    "ef-sgd-scaled-sign-invert": {"algorithm": "ef-sgd", "adversaries": 1},
    "fp32-ps": {"algorithm": "fp32-ps"},
    "fp16-ps-random-attack": {"algorithm": "fp16-ps", "adversaries": 1, "attack": "random"},
    "allreduce": {"algorithm": "allreduce", "momentum": 0.5},
    "allreduce-invert": {"algorithm": "allreduce", "adversaries": 1},
}


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def digests(path) -> dict:
    """What must not change, read back from one log."""
    import h5py

    with h5py.File(path, "r", swmr=True) as f:
        steps = sorted(n for n in f["steps"] if not n.startswith("time_"))
        parts = {
            "final_params_sha256": f["final_params_sha256"][()].decode(),
            "steps": {n: _sha(f["steps"][n][()]) for n in steps},
            "eval": _sha(*(f["eval"][n][()] for n in sorted(f["eval"]))),
            "attrs": {k: str(v) for k, v in sorted(f.attrs.items())
                      if k not in VOLATILE_ATTRS and k not in RUN_PART_ATTRS},
            "run_part": {k: str(f.attrs[k]) for k in RUN_PART_ATTRS if k in f.attrs},
        }
        if "messages" in f:
            parts["messages"] = {n: _sha(f["messages"][n][()])
                                 for n in sorted(f["messages"])}
    return parts


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_gives_the_recorded_bytes(comm, mpi_tmp_path, case):
    size = comm.Get_size()
    settings = {"iterations": 6, "eval_every": 3, "flush_every": 4, "hidden": 32,
                "batch_size": 16, "seed": 11, "quiet": True, **CASES[case]}
    if settings.get("algorithm") != "allreduce":  # allreduce sends no messages to record
        settings["record_messages"] = 6
    log = str(mpi_tmp_path / f"{case}.h5")
    runtime.train(TrainConfig(log=log, **settings).resolved(), comm)
    comm.Barrier()
    if comm.Get_rank() != 0:
        return
    got = digests(log)
    key = f"{case}@{size}"
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    assert got.pop("run_part") == RUN_PART_ATTRS, f"{case}: a fresh run's part and first step"
    if RECORD:
        recorded[key] = got
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    if key not in recorded:
        pytest.skip(f"no recorded bytes for {key} (world size {size}); record with "
                    "HPCGRAD_RECORD_GOLDEN=1")
    want = recorded[key]
    assert got["final_params_sha256"] == want["final_params_sha256"], "final parameters"
    for part in ("steps", "messages", "attrs"):
        for name in sorted(set(want.get(part, {})) | set(got.get(part, {}))):
            if part == "attrs" and name in ATTRS_ADDED_SINCE_RECORDING \
                    and name not in want["attrs"]:
                continue
            assert got.get(part, {}).get(name) == want.get(part, {}).get(name), \
                f"{case}: {part}/{name} changed"
    assert got["eval"] == want["eval"], f"{case}: evals changed"
