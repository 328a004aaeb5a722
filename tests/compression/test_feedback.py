"""The residual memory every error-feedback algorithm shares (hpcgrad.compression.feedback)."""

import numpy as np
import pytest

from hpcgrad.compression.feedback import Residual, residual_of


def test_compensate_accumulates_with_decay_and_allocates_on_first_use():
    memory = Residual(0.5)
    assert memory.values is None
    e = memory.compensate(np.array([1, -2, 4], np.float32))
    assert e is memory.values and e.dtype == np.float32
    memory.compensate(np.array([1, 1, 1], np.float32))
    np.testing.assert_array_equal(memory.values, [1.5, 0, 3])  # 0.5*e + g


def test_the_three_ways_to_take_out_what_was_sent():
    memory = Residual(size=4)
    memory.compensate(np.array([1, 2, 3, 4], np.float32))
    memory.subtract_at(np.array([1, 3]), np.array([2, 3.5], np.float32))
    np.testing.assert_array_equal(memory.values, [1, 0, 3, 0.5])
    memory.forget(np.array([0, 2, 99]), 2)  # only the first nnz positions
    np.testing.assert_array_equal(memory.values, [0, 0, 0, 0.5])
    memory.subtract(np.array([0, 0, 0, 0.25], np.float32))
    np.testing.assert_array_equal(memory.values, [0, 0, 0, 0.25])
    u = np.ones(4, np.float32)
    memory.add_to(u)
    np.testing.assert_array_equal(u, [1, 1, 1, 1.25])


def test_no_memory_is_no_residual_not_rho_zero():
    with pytest.raises(ValueError, match=r"rho in \(0, 1\], got 0"):
        Residual(0.0)


class _Alg:
    name = "demo"
    residual = residual_of("memory")

    def __init__(self, memory):
        self.memory = memory


def test_the_checkpoint_path_residual_reads_and_writes_the_memory():
    alg = _Alg(Residual())
    assert alg.residual is None
    alg.residual = np.arange(3, dtype=np.float32)
    assert alg.memory.values is alg.residual
    without = _Alg(None)
    assert without.residual is None
    without.residual = None  # a checkpoint of a run without memory
    with pytest.raises(ValueError, match="demo keeps no residual"):
        without.residual = np.zeros(3, np.float32)
