"""Every fused worker step against the reference path of the same algorithm (``fused = False``):
the same uplink bytes and the same worker state (residual, momentum), step after step, with
tensors large enough for the fused selection (> 65536 entries) and small ones."""

import sys
from pathlib import Path

import numpy as np
import pytest

from hpcgrad.algorithms import create
from hpcgrad.training.config import TrainConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "algorithms"))
from without_mpi import context, uplink_buffer  # noqa: E402

SEGMENTS = [70_001, 129, 3, 66_001]
CASES = {
    "s3gd-mv": {},
    "s3gd-mv rho 0.5": {"algorithm": "s3gd-mv", "residual": 0.5},
    "s3gd-mv rho 0": {"algorithm": "s3gd-mv", "residual": 0.0},
    "s3gd-mv k auto": {"algorithm": "s3gd-mv", "k_per_worker": "auto"},
    "topk": {"sparsity": 0.01},
    "topk fp16 values": {"algorithm": "topk", "sparsity": 0.01, "topk_values": "fp16"},
    "topk union-boost": {"algorithm": "topk", "sparsity": 0.01,
                         "topk_selection": "union-boost"},
    "qsgd": {"bits": 3},
    "dq-sgd": {},
    "fp16-ps": {},
}


def worker_state(alg):
    out = []
    for name in ("residual",):
        value = getattr(alg, name, None)
        out.append(None if value is None else np.asarray(value).tobytes())
    return out


def run(label, fused, steps=3):
    settings = dict(CASES[label])
    algorithm = settings.pop("algorithm", label)
    cfg = TrainConfig(algorithm=algorithm, seed=5, **settings).resolved()
    alg = create(cfg, sum(SEGMENTS), 3, SEGMENTS)
    alg.fused = fused
    rng = np.random.default_rng(2)
    msg = uplink_buffer(alg, 2)
    wires = []
    for step in range(steps):
        g = rng.standard_normal(sum(SEGMENTS)).astype(np.float32)
        g[::6] = 0.0
        g[1::19] = -0.0
        g[5::1001] = 2.5  # ties at one magnitude
        msg.begin(step)
        alg.worker_step(context(alg, 2, step), g, msg)
        wires.append(msg.wire.tobytes())
    return wires, worker_state(alg)


@pytest.mark.parametrize("label", list(CASES))
def test_fused_worker_step_sends_and_keeps_what_the_reference_does(label):
    assert run(label, True) == run(label, False)
