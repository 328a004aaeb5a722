"""The shard plan of ``--servers S`` (``Shard.split``), the roles, and the settings refused
before any communication.  The multi-rank runs: tests/training/test_shards_mpi.py."""

from pathlib import Path

import numpy as np
import pytest

from hpcgrad.algorithms.step import SHARD_WORD, Roles, Shard
from hpcgrad.errors import ConfigError
from hpcgrad.training.config import TrainConfig
from hpcgrad.training.sharding import ShardedAlgorithm

SEGMENTS = [32 * 64, 64, 64 * 10, 10, 5000, 3]  # the embedded mlp's shapes, and odd ones


@pytest.mark.parametrize("servers", [2, 3, 4, 7])
def test_shards_are_contiguous_word_aligned_and_balanced(servers):
    shards = Shard.split(SEGMENTS, servers)
    d = sum(SEGMENTS)
    assert len(shards) == servers
    assert shards[0].start == 0 and shards[-1].stop == d
    for a, b in zip(shards, shards[1:]):
        assert a.stop == b.start and a.stop % SHARD_WORD == 0
    counts = [s.count for s in shards]
    # balanced by size: within one word of each other (the last may end inside a word)
    assert max(counts) - min(counts) <= 2 * SHARD_WORD
    assert min(counts) >= SHARD_WORD


def test_pieces_of_tensors_cut_by_a_boundary_cover_every_coordinate_once():
    d = sum(SEGMENTS)
    covered = np.zeros(d, dtype=int)
    flat = np.concatenate([[0], np.cumsum(SEGMENTS)])
    for shard in Shard.split(SEGMENTS, 3):
        assert sum(shard.segments) == shard.count and min(shard.segments) > 0
        assert shard.offsets[0] == shard.start and shard.offsets[-1] == shard.stop
        assert list(np.diff(shard.offsets)) == list(shard.segments)
        assert shard.local_offsets[0] == 0
        for lo, n in zip(shard.offsets[:-1], shard.segments):
            covered[lo:lo + n] += 1
            # a piece lies inside one tensor
            t = np.searchsorted(flat, lo, side="right") - 1
            assert lo + n <= flat[t + 1]
    assert (covered == 1).all()


def test_one_server_is_the_whole_vector_unchanged():
    (whole,) = Shard.split([3, 0, 5], 1)
    assert (whole.start, whole.stop, whole.segments) == (0, 8, (3, 0, 5))


def test_a_shard_under_one_word_is_refused_naming_d_s_and_the_word():
    with pytest.raises(ConfigError, match=r"--servers 3: 150 parameters .* 3 shards .*64"):
        Shard.split([100, 50], 3)
    assert len(Shard.split([100, 28], 2)) == 2  # 128 = two words: fine


def test_roles_servers_first_then_workers():
    roles = [Roles(r, 7, 3) for r in range(7)]
    assert [r.role() for r in roles] == ["server 0", "server 1", "server 2", "worker 0",
                                         "worker 1", "worker 2", "worker 3"]
    assert roles[4].worker == 1 and roles[4].server is None and roles[1].server == 1
    assert roles[0].workers == 4 and roles[0].worker_rank(3) == 6
    one = Roles(2, 5)
    assert one.worker == 1 and not one.is_server  # one server: worker = rank - 1, as before


@pytest.mark.parametrize("servers, size", [(0, 4), (4, 4), (5, 4)])
def test_roles_need_a_worker_and_a_server(servers, size):
    with pytest.raises(ConfigError, match=rf"--servers {servers} with {size} ranks"):
        Roles(0, size, servers)


def test_settings_refused_before_any_communication():
    with pytest.raises(ConfigError, match="allreduce has no server"):
        TrainConfig(algorithm="allreduce", servers=2).resolved()
    with pytest.raises(ConfigError, match="servers"):
        TrainConfig(servers=0).resolved()
    with pytest.raises(ConfigError, match="--record-messages with --servers 2"):
        TrainConfig(servers=2, record_messages=1).resolved()
    with pytest.raises(ConfigError, match="--servers 2 with --hierarchy node: node leaders talk "
                                          "to one server"):
        TrainConfig(servers=2, hierarchy="node").resolved()


def test_one_algorithm_instance_per_shard_sized_by_its_pieces():
    config = TrainConfig(algorithm="qsgd", servers=3).resolved()
    alg = ShardedAlgorithm(config, SEGMENTS, 4, 3)
    assert [a.num_params for a in alg.shards] == [s.count for s in alg.plan]
    assert [a.segments for a in alg.shards] == [list(s.segments) for s in alg.plan]
    assert alg.shard2 is alg.shards[2] and alg.num_params == sum(SEGMENTS)
    meta = alg.metadata()
    assert meta["servers"] == 3 and meta["shards"].startswith("[[0, ")


def test_a_server_that_dies_ends_every_rank(tmp_path):
    """Server 1 of two exits in its server step: the workers and server 0 wait in the
    collectives of that step; the failure policy still ends the whole job, promptly."""
    import time

    import h5py

    from mpirun import run_mpi

    script = str(Path(__file__).parents[1] / "scripts" / "faulty_run.py")

    started = time.monotonic()
    result = run_mpi(5, [script, "die-server", "1", "--", "--log", str(tmp_path / "run.h5"),
                         "--iterations", "200", "--quiet", "--flush-every", "2",
                         "--servers", "2"], module=None, timeout=90)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    with h5py.File(tmp_path / "run.h5", "r", swmr=True) as f:  # kept up to its last flush
        assert f.attrs["servers"] == 2 and f["steps/incast"].shape[1] == 2
