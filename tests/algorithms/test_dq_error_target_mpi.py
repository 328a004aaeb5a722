"""DQ-SGD's error-target rule under a real mpiexec: every logged width after step 0 is the
smallest one whose QSGD variance bound, computed from the previous step's uplink norms as
recorded in the log, meets ``--dq-error-target``; the run attributes name the rule.

Run with: mpiexec -n N python -m mpi4py -m pytest --with-mpi -m mpi tests
"""

import json

import h5py
import numpy as np
import pytest

from hpcgrad import workloads
from hpcgrad.algorithms.qsgd import variance_bound
from hpcgrad.training import runtime
from hpcgrad.training.config import TrainConfig
from hpcgrad.wire import HEADER_SIZE

pytestmark = pytest.mark.mpi(min_size=3)

ITERATIONS, TARGET, RHO = 10, 2.0, 0.9


def test_every_width_is_the_smallest_that_meets_the_target(comm, mpi_tmp_path):
    log = mpi_tmp_path / "dq-error-target.h5"
    config = TrainConfig(algorithm="dq-sgd", dq_error_target=TARGET, dq_rho=RHO,
                         dq_start_bits=5, iterations=ITERATIONS, record_messages=ITERATIONS,
                         eval_every=0, hidden=32, quiet=True, log=str(log)).resolved()
    runtime.train(config, comm, data=workloads.synthetic(config.seed, train=1024, test=128))
    comm.Barrier()
    if comm.Get_rank() != 0:
        return
    with h5py.File(log, "r") as f:
        attrs = dict(f.attrs)
        bits = f["steps"]["bits"][...]
        up_bytes = f["messages"]["uplink_bytes"][...].tobytes()
        up_index = f["messages"]["uplink_index"][...]
    assert attrs["dq_rule"] == "error-target" and float(attrs["dq_error_target"]) == TARGET
    segments = json.loads(attrs["segments"])
    assert bits[0] == 5
    for step in range(ITERATIONS - 1):
        squares = np.zeros(len(segments))
        for offset, _ in up_index[step]:
            norms = np.frombuffer(up_bytes, "<f4", len(segments), offset + HEADER_SIZE)
            squares += norms.astype(np.float64) ** 2
        damping = RHO ** (ITERATIONS - 1 - (step + 1))
        want = next((b for b in range(2, 9)
                     if damping * variance_bound(segments, squares, b) <= TARGET), 8)
        assert bits[step + 1] == want, step
    assert len(set(bits[1:].tolist())) >= 1 and bits[1:].min() < 8  # the rule ran, not capped
