"""rand-K's allocation-free draw gives Generator.choice's positions, in both of NumPy's
algorithms (Floyd's hash set; the tail shuffle past n > 10000 and k > n // 50) and at their
edges: k = 0, k = 1, k = n, the cut-off itself, sizes not a multiple of 64."""

import numpy as np
import pytest

from hpcgrad.kernels.sparse.sample import choice_sorted, hash_set_size, tail_shuffle

CASES = [(1, 0), (1, 1), (2, 1), (63, 7), (64, 64), (65, 64), (1000, 999), (10000, 200),
         (10000, 201), (10001, 200), (10001, 201), (20000, 401), (50000, 500),
         (100003, 1001), (100003, 5000), (1 << 20, 10486), (200000, 199999)]


@pytest.mark.parametrize("n,k", CASES)
@pytest.mark.parametrize("seed", [[1, 2, 3, 4], [7, 0, 1, 0]])
def test_choice_sorted_is_generator_choice(n, k, seed):
    expected = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    out = np.full(k + 1, -1, dtype=np.int64)  # one past k: nothing written beyond k
    order = np.empty(n if tail_shuffle(n, k) else 0, dtype=np.int64)
    choice_sorted(np.random.default_rng(seed), n, k, out,
                  np.empty(hash_set_size(k), dtype=np.uint64), order)
    np.testing.assert_array_equal(out[:k], expected)
    assert out[k] == -1


def test_randomk_compressor_sends_the_positions_choice_draws():
    from hpcgrad.algorithms.step import Shard, StepContext
    from hpcgrad.compression.compressors import create
    from hpcgrad.training.config import TrainConfig
    from hpcgrad.wire import Header, MessageBuffer

    segments = [70000, 3, 129]
    offsets = np.array([0, 70000, 70003, 70132], dtype=np.int64)
    config = TrainConfig(algorithm="ef-sgd", compressor="randomk", sparsity=0.05,
                         seed=11).resolved()
    comp = create(config, segments, offsets)
    assert tail_shuffle(segments[0], comp.ks[0])  # both of NumPy's algorithms run here
    values = np.random.default_rng(0).standard_normal(70132).astype(np.float32)
    codec = comp.codecs()[0]
    message = MessageBuffer(Header(codec.id, 70132, codec.max_body_length(70132), 0, 2),
                            variable=True)
    message.begin(5)
    comp.compress(StepContext(2, 4, Shard.whole(segments), step=5), values, message)
    expected = np.concatenate([
        np.sort(np.random.default_rng([11, 5, 2, l]).choice(n, size=k, replace=False)) + o
        for l, (o, n, k) in enumerate(zip(offsets, segments, comp.ks))])
    np.testing.assert_array_equal(comp.positions[:comp.nnz], expected)
