"""Worked examples of ../shared/docs/algorithms.md §1, through the algorithm object."""

import numpy as np
import pytest

from hpcgrad.wire import codecs
from hpcgrad.algorithms import create
from hpcgrad.training.config import TrainConfig
from hpcgrad.kernels.generic import decode_signs
from hpcgrad.wire import Header, MessageBuffer
from without_mpi import context, exchange


def algorithm(d, workers, **settings):
    cfg = TrainConfig(algorithm="signum-mv", **settings).resolved()
    return create(cfg, d, workers)


def worker_message(alg, grad, step=0):
    msg = MessageBuffer(Header(alg.uplink.id, alg.num_params,
                               alg.uplink.body_length(alg.num_params), step, 1))
    alg.worker_step(context(alg, 1, step), np.asarray(grad, dtype=np.float32), msg)
    return msg


def vote(grads, tie):
    d, workers = len(grads[0]), len(grads)
    algs = [algorithm(d, workers, tie=tie, momentum=0.0) for _ in grads]
    server = algorithm(d, workers, tie=tie, momentum=0.0)
    _, down = exchange(algs, server, grads)
    _, direction = codecs.decode_message(down.wire.tobytes())
    return direction, server


def test_majority_vote_ties_positive():
    direction, server = vote([[1, -2, 0, 3], [-1, -1, 0, 2]], "positive")
    assert server.downlink is codecs.SIGN1
    assert direction.tolist() == [1, -1, 1, 1]


def test_majority_vote_ties_zero_uses_ternary_downlink():
    direction, server = vote([[1, -2, 0, 3], [-1, -1, 0, 2]], "zero")
    assert server.downlink is codecs.TERNARY2
    assert direction.tolist() == [0, -1, 0, 1]


def test_majority_vote_ties_random_only_touches_ties():
    direction, _ = vote([[1, -2, 0, 3], [-1, -1, 0, 2]], "random")
    assert direction[1] == -1 and direction[2] == 1 and direction[3] == 1
    assert direction[0] in (-1, 1)


def test_signum_momentum_worked_example():
    alg = algorithm(3, 1, momentum=0.9)
    worker_message(alg, [1, -1, 0.5], 0)
    msg = worker_message(alg, [-5, 0.5, 0.5], 1)
    assert np.allclose(alg.momentum, [-0.41, -0.04, 0.095], atol=1e-6)
    assert decode_signs(msg.body, 3).tolist() == [-1, -1, 1]


def test_update_applies_weight_decay_after_the_vote():
    alg = algorithm(2, 1, lr=0.5, weight_decay=0.1, momentum=0.0)
    params = np.array([1.0, -2.0], dtype=np.float32)
    body = np.zeros(8, dtype=np.uint8)
    codecs.SIGN1.encode(np.array([1.0, -1.0], dtype=np.float32), body)
    alg.apply(context(alg, 1, params=params), body)
    # x - lr*(s + wd*x): 1 - .5*(1 + .1) = .45 ; -2 - .5*(-1 - .2) = -1.4
    assert params == pytest.approx([0.45, -1.4])
