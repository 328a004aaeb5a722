"""A real `hpcgrad train` run in which one rank misbehaves at step 3.

Usage (under mpiexec, through ``python -m mpi4py``):
    faulty_run.py MODE RANK -- <hpcgrad train options>

MODE: raise (an exception in the worker step), corrupt (bad magic in the
uplink header), nan (a NaN gradient), die (the process exits at once, as if
killed), die-server (the same in the server step: a server of --servers S dies).  Only the fault is injected; MPI, the runtime and the log are real.
"""

import os
import sys

import numpy as np
from mpi4py import MPI

from hpcgrad import cli
from hpcgrad.algorithms import REGISTRY
from hpcgrad.training.flat import FlatModel
from hpcgrad.wire import MessageBuffer

mode, bad_rank = sys.argv[1], int(sys.argv[2])
options = sys.argv[sys.argv.index("--") + 1:]
FAULT_STEP = 3

if MPI.COMM_WORLD.Get_rank() == bad_rank:
    cls = REGISTRY["signum-mv"]
    original = cls.worker_step

    def worker_step(self, ctx, grad, uplink):
        if ctx.step == FAULT_STEP:
            if mode == "raise":
                raise RuntimeError("injected failure")
            if mode == "die":
                os._exit(9)
        original(self, ctx, grad, uplink)

    cls.worker_step = worker_step

    if mode == "die-server":  # a server (--servers S: any of ranks 0..S-1) killed mid-step
        serve = cls.server_step

        def dying_server_step(self, ctx, uplinks, downlink):
            if ctx.step == FAULT_STEP:
                os._exit(9)
            serve(self, ctx, uplinks, downlink)

        cls.server_step = dying_server_step

    if mode == "corrupt":  # the uplink header's magic, as a bit error on the wire would
        stamp = MessageBuffer.stamp

        def corrupting_stamp(self, step):
            stamp(self, step)
            if step == FAULT_STEP:
                self.raw[:4] = np.frombuffer(b"XXXX", dtype=np.uint8)

        MessageBuffer.stamp = corrupting_stamp

    if mode == "corrupt-body":  # an s3gd-mv uplink whose bitstream is garbage
        s3gd = REGISTRY["s3gd-mv"]
        s3gd_step = s3gd.worker_step

        def corrupting_worker_step(self, ctx, grad, uplink):
            s3gd_step(self, ctx, grad, uplink)
            if ctx.step == FAULT_STEP:
                uplink.padded_body[:8] = 0  # an Elias-gamma count with no end

        s3gd.worker_step = corrupting_worker_step

    if mode == "nan":  # a NaN in the last tensor's gradient, as backward() would leave it
        check = FlatModel.check_grads_finite
        calls = []

        def check_grads_finite(self):
            calls.append(1)
            if len(calls) == FAULT_STEP + 1:
                self.grads[-1] = float("nan")
            check(self)

        FlatModel.check_grads_finite = check_grads_finite

sys.exit(cli.main(["train", *options]))
