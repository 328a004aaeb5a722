"""ef-sgd's fused worker step (hpcgrad/kernels/fused_feedback.py, ``ErrorFeedbackSGD.
_fused_worker_step``) against the reference path of the same class: the same uplink bytes,
residual and momentum buffer, bit for bit, step after step, for every compressor."""

import sys
from pathlib import Path

import numpy as np
import pytest

from hpcgrad.algorithms.ef_sgd import ErrorFeedbackSGD
from hpcgrad.compression.compressors import COMPRESSORS
from hpcgrad.errors import WireFormatError
from hpcgrad.training.config import TrainConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "algorithms"))
from without_mpi import context, uplink_buffer  # noqa: E402


class Reference(ErrorFeedbackSGD):
    """The same algorithm with the fusion turned off: the ten-pass NumPy path."""

    fused = False


def config(**settings):
    return TrainConfig(algorithm="ef-sgd", **settings).resolved()


def worker_run(cls, cfg, segments, grads, params):
    """Worker 1's uplinks, then its residual and momentum buffer."""
    alg = cls(cfg, sum(segments), 2, segments)
    msg = uplink_buffer(alg, 1)
    wires = []
    for step, g in enumerate(grads):
        msg.begin(step)
        x = None if params is None else params.copy()
        alg.worker_step(context(alg, 1, step, x), g, msg)
        wires.append(msg.wire.tobytes())
    return wires, alg.residual.tobytes(), alg.sgd.buffer.tobytes()


def gradients(d, steps, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        g = rng.standard_normal(d).astype(np.float32)
        g[::9] = 0.0
        g[4::17] = -0.0
        out.append(g)
    return out


SEGMENTS = {"one odd tensor": [1001], "small tensors": [7, 64, 65, 3],
            "large tensors": [70_001, 13, 66_000]}


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("shape", list(SEGMENTS))
@pytest.mark.parametrize("feedback,wd", [("ef", 0.0), ("step-ahead", 1e-3)])
def test_fused_step_sends_and_keeps_what_the_reference_does(compressor, shape, feedback, wd):
    segments = SEGMENTS[shape]
    d = sum(segments)
    cfg = config(compressor=compressor, feedback=feedback, weight_decay=wd, sparsity=0.01,
                 bits=4, momentum=0.9, lr=0.1)
    grads = gradients(d, 3, d)
    params = None if wd == 0 else np.random.default_rng(1).standard_normal(d).astype(
        np.float32)
    assert worker_run(ErrorFeedbackSGD, cfg, segments, grads, params) == \
        worker_run(Reference, cfg, segments, grads, params)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_gradient_is_refused_as_before(bad):
    cfg = config(compressor="scaled-sign", feedback="ef")
    errors = []
    for cls in (ErrorFeedbackSGD, Reference):
        g = gradients(1001, 1, 0)[0]
        g[500] = bad
        with pytest.raises(WireFormatError) as caught:
            worker_run(cls, cfg, [1001], [g], None)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "scale" in errors[0]
