"""``--hierarchy node`` under a real mpiexec (pytest-mpi, 5 ranks): the same job, the same
seed, trained flat and through node leaders, must end with the same parameters and send the
same downlinks; the log says what went over each link.

Run with: mpiexec -n 5 python -m mpi4py -m pytest --with-mpi -m mpi
tests/training/test_hierarchy_mpi.py

Every run is close to the golden settings (tests/test_golden_runs.py): four steps of a small
MLP on 1,024 generated examples, so each run is mostly its setup.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcgrad.comm.agreement import SetupError
from hpcgrad.training import runtime
from hpcgrad.training.config import TrainConfig
from hpcgrad.wire import HEADER_SIZE
from test_golden_runs import CASES

pytestmark = pytest.mark.mpi(min_size=5)

BASE = {"iterations": 4, "eval_every": 0, "flush_every": 3, "hidden": 32, "batch_size": 16,
        "examples": 1024, "seed": 11, "quiet": True, "record_messages": 4}

#: One case per algorithm (forwarded), with the options that change its messages most: a
#: variable-length one, an adversary, error averaging, server feedback, the fp16 downlink.
FORWARDED = {
    "s3gd-mv-random-attack": CASES["s3gd-mv-random-attack"],
    "topk-leader": CASES["topk-leader"],
    "qsgd-2bit-quantized-downlink": CASES["qsgd-2bit-quantized-downlink"],
    "dq-sgd": CASES["dq-sgd"],
    "terngrad": {"algorithm": "terngrad"},
    "ef-sgd-scaled-sign-step-ahead-averaging":
        CASES["ef-sgd-scaled-sign-step-ahead-averaging"],
    "ef-sgd-topk-server-feedback": CASES["ef-sgd-topk-server-feedback"],
    "fp32-ps": CASES["fp32-ps"],
    "fp16-ps-random-attack": CASES["fp16-ps-random-attack"],
}
#: signum-mv, combined on the node: every tie rule, and an adversary.
COMBINED = {name: CASES[name] for name in ("signum-mv", "signum-mv-tie-zero",
                                           "signum-mv-tie-random-wd", "signum-mv-invert")}
#: --ranks-per-node K at 5 ranks -> the workers of each node.
NODES = {2: [[1], [2, 3], [4]], 3: [[1, 2], [3, 4]], 4: [[1, 2, 3], [4]]}


def _train(comm, path, **settings):
    runtime.train(TrainConfig(log=str(path), **{**BASE, **settings}).resolved(), comm)
    comm.Barrier()


def _read(path) -> dict:
    with h5py.File(path, "r") as f:
        out = {"sha": f["final_params_sha256"][()].decode(),
               "attrs": {k: v for k, v in f.attrs.items()},
               "steps": {n: f["steps"][n][()] for n in f["steps"] if not n.startswith("time_")},
               "down": f["messages/downlink_bytes"][()]}
        index = f["messages/uplink_index"][()]
        raw = f["messages/uplink_bytes"][()]
        out["up"] = [[raw[o:o + n].tobytes() for o, n in row] for row in index]
        return out


def _runs(comm, tmp, case, settings, ks):
    """The flat run and one node run per K (rank 0: their logs read back; others: None)."""
    _train(comm, tmp / f"{case}-flat.h5", **settings)
    for k in ks:
        _train(comm, tmp / f"{case}-node{k}.h5", hierarchy="node", ranks_per_node=k,
               **settings)
    if comm.Get_rank():
        return None, {}
    return _read(tmp / f"{case}-flat.h5"), {k: _read(tmp / f"{case}-node{k}.h5") for k in ks}


@pytest.mark.parametrize("case", sorted(FORWARDED))
def test_forwarding_ends_bit_identical_to_the_flat_run(comm, mpi_tmp_path, case):
    flat, nodes = _runs(comm, mpi_tmp_path, case, FORWARDED[case], [3])
    if comm.Get_rank():
        return
    node = nodes[3]  # workers {1,2} and {3,4}: leaders 1 and 3
    assert node["attrs"]["hierarchy_mode"] == "forwarding"
    assert node["sha"] == flat["sha"], f"{case}: final parameters differ from the flat run"
    assert node["up"] == flat["up"], f"{case}: the server received other uplinks"
    assert np.array_equal(node["down"], flat["down"]), f"{case}: downlinks differ"
    for name, column in flat["steps"].items():
        assert np.array_equal(node["steps"][name], column), f"{case}: steps/{name}"
    up = flat["steps"]["bytes_up"]
    intra, inter = node["steps"]["bytes_intra_node"], node["steps"]["bytes_inter_node"]
    # workers 2 and 4 send to their leaders (1 and 3), who forward both messages
    assert np.array_equal(intra, up * [0, 1, 0, 1])
    assert np.array_equal(inter[:, [0, 2]], up[:, [0, 2]] + up[:, [1, 3]])
    assert not inter[:, [1, 3]].any()


@pytest.mark.parametrize("case", sorted(COMBINED))
def test_combining_votes_send_the_flat_downlink_byte_for_byte(comm, mpi_tmp_path, case):
    ks = [2, 3, 4] if case == "signum-mv-tie-random-wd" else [3]
    flat, nodes = _runs(comm, mpi_tmp_path, case, COMBINED[case], ks)
    if comm.Get_rank():
        return
    signed = COMBINED[case].get("tie") == "zero"
    for k, node in nodes.items():
        assert node["attrs"]["hierarchy_mode"] == "combining"
        assert np.array_equal(node["down"], flat["down"]), f"{case}, K={k}: downlinks differ"
        assert node["sha"] == flat["sha"], f"{case}, K={k}: final parameters differ"
        assert np.array_equal(node["steps"]["bytes_up"], flat["steps"]["bytes_up"])
        d = int(node["attrs"]["num_params"])
        plane = -(-d // 8)
        stride = -(-plane // 8) * 8
        inter = node["steps"]["bytes_inter_node"]
        for group in NODES[k]:
            levels = (2 * len(group) if signed else len(group)).bit_length()
            counts_message = HEADER_SIZE + (levels - 1) * stride + plane
            assert (inter[:, group[0] - 1] == counts_message).all()
            assert not inter[:, [r - 1 for r in group[1:]]].any()
            # rank 0 received the node's counts in its leader's place, and nothing else
            for step in node["up"]:
                assert len(step[group[0] - 1]) == counts_message
                assert all(step[r - 1] == b"" for r in group[1:])


def test_every_node_with_one_worker_is_refused_on_every_rank(comm, mpi_tmp_path):
    with pytest.raises(SetupError, match="every node has one worker .* nothing to combine"):
        _train(comm, mpi_tmp_path / "one.h5", hierarchy="node", ranks_per_node=1)


def test_the_nodes_mpi_reports_work_too(comm, mpi_tmp_path):
    """ranks_per_node 0: one machine is one node, all workers under one leader."""
    _train(comm, mpi_tmp_path / "shared.h5", hierarchy="node", iterations=2)
    if comm.Get_rank() == 0:
        got = _read(mpi_tmp_path / "shared.h5")
        assert got["attrs"]["hierarchy_source"] == "MPI_COMM_TYPE_SHARED"
        assert got["attrs"]["hierarchy_nodes"] == repr([list(range(1, comm.Get_size()))])


@pytest.mark.parametrize("variable", [False, True])
def test_nodes_of_any_placement_deliver_the_flat_uplinks(comm, variable):
    """A round-robin placement (nodes {0,2,4} and {1,3}: not consecutive ranks), as MPI may
    report it: rank 0 still gets every message in its worker's slot, checked."""
    from hpcgrad.comm.relay import NodeRelay
    from hpcgrad.comm.topology import NodeComms, Topology, groups_from_keys
    from hpcgrad.comm.transport import ParameterServer
    from hpcgrad.wire import Header

    size, rank = comm.Get_size(), comm.Get_rank()
    topology = Topology(groups_from_keys([r % 2 for r in range(size)]), "test")
    comms = NodeComms(comm, topology)
    uplink, downlink = Header(1, 6, 24, 0, 0), Header(1, 6, 24, 0, 0)
    kwargs = {"variable": variable, "uplink_codecs": [1], "downlink_codecs": [1]}
    relay = NodeRelay(comm, comms, uplink, downlink, **kwargs)
    flat = ParameterServer(comm, uplink, downlink, **kwargs)
    for step in range(3):
        for transport in (relay, flat):
            if rank:
                length = 4 * (1 + (rank + step) % 6) if variable else 24
                transport.uplink.begin(step)
                transport.uplink.padded_body[:length] = rank * 16 + step + np.arange(length)
                if variable:
                    transport.uplink.write(1, 0, length)
            transport.gather(step)
        if rank == 0:
            for r in range(1, size):
                assert relay.uplinks.message(r).tobytes() == flat.uplinks.message(r).tobytes()
                assert relay.uplinks.header(r - 1) == flat.uplinks.header(r - 1)
            assert np.array_equal(relay.uplinks.raw, flat.uplinks.raw)
    comms.free()
