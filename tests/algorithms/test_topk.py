"""Top-K with error feedback (``topk``) through the algorithm object: the residual identity,
the server's mean over the union, each selection rule, the non-IID partition and bad settings."""

import numpy as np
import pytest
import torch

from hpcgrad.wire import codecs
from hpcgrad import workloads
from hpcgrad.algorithms import create
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError, WireFormatError
from hpcgrad.wire import read_header
from without_mpi import apply, exchange

RULES = ("local", "union-boost", "aggregate-hint", "shared-random", "leader")
SEGMENTS = [300, 20, 180, 7]
D = sum(SEGMENTS)


def algorithm(workers, d=D, segments=SEGMENTS, **settings):
    cfg = TrainConfig(algorithm="topk", **{"sparsity": 0.05, **settings}).resolved()
    return create(cfg, d, workers, segments)


def run(workers, steps, seed=0, **settings):
    """``steps`` exchanges; yields (step, ranks, up, down, grads), every rank applied."""
    ranks = [algorithm(workers, **settings) for _ in range(workers + 1)]
    rng = np.random.default_rng(seed)
    params = [np.zeros(D, dtype=np.float32) for _ in ranks]
    for step in range(steps):
        grads = rng.standard_normal((workers, D)).astype(np.float32)
        grads[:, : 40] *= 5  # a few large coordinates common to all workers
        up, down = exchange(ranks[1:], ranks[0], grads, step)
        yield step, ranks, up, down, grads
        for rank, (alg, p) in enumerate(zip(ranks, params)):
            apply(alg, rank, p, down, step)
    assert all(np.array_equal(p, params[0]) for p in params)  # replicas stay identical


def decoded(message):
    return codecs.decode_message(message.tobytes())


@pytest.mark.parametrize("values", ["fp32", "fp16"])
@pytest.mark.parametrize("rule", RULES)
def test_sent_plus_residual_is_the_accumulated_gradient(rule, values):
    accumulated = sent = None
    for step, ranks, up, down, grads in run(4, 6, topk_selection=rule, topk_values=values):
        if accumulated is None:
            accumulated = np.zeros_like(grads, dtype=np.float64)
            sent = np.zeros_like(accumulated)
        accumulated += grads
        for w in range(4):
            header, vals = decoded(up.message(w + 1))
            assert header.codec == codecs.SPARSE_VALUES.id
            assert bool(header.flags & codecs.SparseValuesCodec.FP16) == (values == "fp16")
            sent[w] += vals
            # float32 arithmetic on both sides; the identity holds to rounding of the sums
            np.testing.assert_allclose(sent[w] + ranks[w + 1].residual, accumulated[w],
                                       rtol=0, atol=1e-4)
    if values == "fp32" and rule == "local":  # one step: exact, bit for bit
        for _, ranks, up, _, grads in run(3, 1, topk_selection=rule):
            for w in range(3):
                vals = decoded(up.message(w + 1))[1]
                np.testing.assert_array_equal(vals + ranks[w + 1].residual, grads[w])


@pytest.mark.parametrize("rule", RULES)
def test_the_aggregate_is_the_mean_of_the_decoded_worker_messages(rule):
    for step, ranks, up, down, _ in run(4, 5, topk_selection=rule):
        server = ranks[0]
        ups = np.array([decoded(up.message(w + 1))[1] for w in range(4)])
        header, agg = decoded(down.wire)
        support = [set(np.flatnonzero(u)) for u in ups]
        positions = np.zeros(D, dtype=np.int64)
        values = np.zeros(D, dtype=np.float32)
        n = codecs.SPARSE_VALUES.decode_into(
            down.wire[32:].copy(), D, header.flags, positions, values,
            np.zeros(D, np.uint8) if rule == "leader" else None)
        union = positions[:n]
        # The union holds every sent position (a sent value may be exactly 0).
        assert set(np.flatnonzero(ups.sum(0) != 0)) <= set(union)
        assert set().union(*support) <= set(union)
        assert server.step_stats["union_size"] == n == server.step_stats["nnz_down"]
        total = np.float32(0) * ups[0]
        for u in ups:  # float32, worker order: as the server adds
            total = total + u
        np.testing.assert_array_equal(agg, total / np.float32(4))
        assert np.all(server.step_stats["nnz_up"] <= server.k_total)


def test_shared_random_gives_a_union_of_exactly_k_every_step():
    for step, ranks, up, down, grads in run(4, 8, topk_selection="shared-random"):
        server = ranks[0]
        assert server.step_stats["union_size"] == server.k_total == sum(server.ks)
        np.testing.assert_array_equal(server.step_stats["nnz_up"], [server.k_total] * 4)


def test_shared_random_unbiased_scales_and_keeps_no_residual():
    for step, ranks, up, down, grads in run(2, 2, topk_selection="shared-random",
                                            unbiased=True):
        alg = ranks[1]
        assert alg.residual is None
        vals = decoded(up.message(1))[1]
        o = 0
        for n, k in zip(SEGMENTS, alg.ks):
            seg = slice(o, o + n)
            nz = vals[seg] != 0
            np.testing.assert_allclose(vals[seg][nz], grads[0][seg][nz] * np.float32(n / k),
                                       rtol=1e-6)
            o += n


def test_leader_followers_use_the_previous_leaders_positions():
    previous = None
    for step, ranks, up, down, grads in run(4, 6, topk_selection="leader"):
        server = ranks[0]
        positions = [np.flatnonzero(decoded(up.message(w + 1))[1]) for w in range(4)]
        leader = server.leader(step)
        if previous is not None:
            for w in range(4):
                if w + 1 != leader:  # values may be 0 at announced positions
                    assert set(positions[w]) <= set(previous)
        previous = positions[leader - 1]
        assert server.step_stats["union_size"] <= 2 * server.k_total if step else True


def test_union_boost_and_hint_prefer_known_coordinates():
    means = {}
    for rule in ("local", "union-boost", "aggregate-hint"):
        knob = {"union-boost": {"union_boost": 4.0},
                "aggregate-hint": {"aggregate_hint": 4.0}}.get(rule, {})
        sizes = [ranks[0].step_stats["union_size"]
                 for _, ranks, *_ in run(4, 8, topk_selection=rule, **knob)]
        means[rule] = np.mean(sizes[1:])
    assert means["union-boost"] < means["local"]
    assert means["aggregate-hint"] < means["local"]


def test_corrupt_or_unexpected_bodies_are_refused():
    for _, ranks, up, down, _ in run(2, 1, topk_selection="leader"):
        body = down.wire[32:].copy()
        header = read_header(down.wire)
        values = np.zeros(D, np.float32)
        positions = np.zeros(D, np.int64)
        with pytest.raises(WireFormatError, match="membership bitmap"):
            codecs.SPARSE_VALUES.decode_into(body, D, header.flags, positions, values)
        with pytest.raises(WireFormatError, match="entries need"):
            codecs.SPARSE_VALUES.decode_into(body[:-1], D, header.flags, positions, values,
                                             np.zeros(D, np.uint8))
        with pytest.raises(WireFormatError, match="flags"):
            codecs.SPARSE_VALUES.decode_into(body, D, header.flags | 0x40, positions, values)


@pytest.mark.parametrize("settings, message", [
    (dict(topk_selection="best"), "unknown topk-selection"),
    (dict(topk_selection="union-boost", union_boost=-1.0), "union-boost must be >= 0"),
    (dict(topk_selection="union-boost", union_boost=float("nan")), "finite"),
    (dict(topk_selection="aggregate-hint", aggregate_hint=-0.5), "aggregate-hint must be >= 0"),
    (dict(topk_selection="local", union_boost=1.0), "union-boost is a weight"),
    (dict(topk_selection="local", unbiased=True), "unbiased"),
    (dict(topk_values="int8"), "fp32 or fp16"),
    (dict(sparsity=1.0), "K < d"),
    (dict(partition="classes:0"), "classes:L"),
    (dict(partition="noniid"), "classes:L"),
])
def test_bad_settings_are_refused_before_training(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(algorithm="topk", **settings).resolved()


def test_k_at_least_d_is_refused_by_the_algorithm():
    cfg = TrainConfig(algorithm="topk", sparsity=0.6).resolved()
    with pytest.raises(ConfigError, match="K < d"):
        create(cfg, 3, 2, [1, 1, 1])  # ceil(0.6) = 1 per one-entry tensor: K = d


def test_iid_partition_is_unchanged_and_classes_partition_is_disjoint():
    data = workloads.synthetic(0, train=2048, test=64)
    perm = torch.randperm(2048, generator=torch.Generator().manual_seed(0))
    for w in range(4):
        s = workloads.ShardSampler(data, w, 4, 32, 0)
        assert torch.equal(s.index, perm[w::4])  # the iid deal, as before
    shards = [workloads.ShardSampler(data, w, 4, 32, 0, partition="classes:2") for w in range(4)]
    for s in shards:
        assert len(s.classes) == 2
        labels = set(data.train_y[s.index].tolist())
        assert labels == set(s.classes)
    seen = torch.cat([s.index for s in shards])
    assert len(seen) == len(set(seen.tolist()))  # no example is dealt twice
    again = workloads.ShardSampler(data, 1, 4, 32, 0, partition="classes:2")
    assert torch.equal(again.index, shards[1].index)  # deterministic
    with pytest.raises(ConfigError, match="1..10"):
        workloads.ShardSampler(data, 0, 4, 32, 0, partition="classes:11")
