"""hpcgrad.analysis.projection's exchanges on two link classes (issue 18): each topology's
formula against a hand computation, the limits where two topologies coincide, the fit across
topologies, reading the topology from a log, and ``hpcgrad analyze project --recommend``."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from analysis_logs import analyze, assert_clean_error, make_log
from hpcgrad.analysis import open_log
from hpcgrad.analysis import projection as P
from hpcgrad.training.tracelog import PHASES

INTRA = P.CostModel(alpha=1e-6, beta=1e-10)
INTER = P.CostModel(alpha=10e-6, beta=1e-9)
NET = P.Network(INTRA, INTER)
ONE = P.Network.uniform(P.CostModel(alpha=1e-6, beta=1e-9))
H = P.HEADER_BYTES


def total(kind, workers, nodes=1, up=1032.0, down=1032.0, net=NET, **kw):
    return P.exchange_time(P.Layout(kind, workers, nodes, **kw), up, down, net)["total"]


def test_flat_is_the_single_link_parameter_server():
    for M in (1, 2, 4, 7, 64):
        assert total("flat", M, net=ONE) == pytest.approx(
            P.step_time("ps", M + 1, 1032, 1032, ONE.intra)["total"])
    # 4 workers on 2 nodes: every byte priced on the inter-node link.
    # gather: lg 5 = 3 rounds, 4 x 1032 B; bcast: 6 rounds, 2 x 1032 x 4/5 B
    want = 3 * 10e-6 + 4 * 1032 * 1e-9 + 6 * 10e-6 + 2 * 1032 * 4 / 5 * 1e-9
    assert total("flat", 4, 2) == pytest.approx(want)


def test_sharded_by_hand_and_one_shard_is_flat():
    for M, n in ((1, 1), (4, 1), (8, 2), (64, 8)):
        assert total("sharded", M, n, servers=1) == pytest.approx(total("flat", M, n))
    # S = 2, 4 workers, one node: pieces of (1032 - 32)/2 + 32 = 532 B up and down.
    # gather: lg 5 + 1 = 4 rounds, the server's incast 4 x 532 B; bcast over 6 ranks:
    # 2 lg 6 + 1 = 7 rounds, 2 x 2 x 532 x 5/6 B on a worker's link.
    want = 4 * 1e-6 + 4 * 532 * 1e-10 + 7 * 1e-6 + 2 * 2 * 532 * 5 / 6 * 1e-10
    assert total("sharded", 4, 1, servers=2) == pytest.approx(want)
    # Two nodes of 4: a node's link sends 4 workers x 2 pieces (4256 B), the server receives
    # 8 pieces (4256 B): the same here; with S = 8 the node's link is the busier one.
    stages = dict(P.exchange_stages(P.Layout("sharded", 8, 2, servers=8), 1032, 1032))
    piece = (1032 - 32) / 8 + 32
    assert stages["gather"][3] == pytest.approx(4 * 8 * piece)
    # rank 0's incast falls as 1/S (up to the headers)
    incast = {s: dict(P.exchange_stages(P.Layout("sharded", 64, 8, servers=s), 1e6 + H,
                                        1e6 + H))["gather"][3] for s in (1, 2, 4)}
    assert incast[2] == pytest.approx(incast[1] / 2, rel=1e-4)
    assert incast[4] == pytest.approx(incast[1] / 4, rel=1e-4)


def test_serverless_by_hand():
    # 4 ranks on one node, 1032 B messages: shards of 1000/4 + 32 = 282 B.
    # Alltoallv: 3 messages, 3 x 282 B; Allgatherv of 4 x 282 B (short: lg 4 = 2 rounds),
    # 3 x 282 B arriving.
    want = 3 * 1e-6 + 3 * 282 * 1e-10 + 2 * 1e-6 + 3 * 282 * 1e-10
    assert total("serverless", 4) == pytest.approx(want)
    # The same on 2 nodes of 2: one on-node and two off-node messages per rank, the node's
    # link carries 2 ranks x 2 pieces; the ring's (3 steps at 512 KiB+) blocks cross it.
    up = 4 * 200_000 + H
    piece = 200_000 + H
    a2a = 1e-6 + 2 * 10e-6 + 2 * 2 * piece * 1e-9
    ring = 3 * 10e-6 + 3 * piece * 1e-9
    assert total("serverless", 4, 2, up=up, down=up) == pytest.approx(a2a + ring)
    assert total("serverless", 1) == 0.0
    # MPICH's Allgatherv: lg p rounds below 80 KiB (or 512 KiB at a power of two), else ring
    assert P._allgatherv_rounds(8, 100_000) == 3 and P._allgatherv_rounds(6, 100_000) == 5
    assert P._allgatherv_rounds(6, 50_000) == 3 and P._allgatherv_rounds(8, 600_000) == 7


def test_hierarchical_by_hand_and_limits():
    # One worker per node: no node stage, the leaders are the workers: flat.
    for M in (2, 5, 16):
        assert total("hierarchical", M, M) == pytest.approx(total("flat", M, M))
    # 2 nodes of 3 workers, forwarding: node Gatherv (lg 3 = 2 rounds, 2 x 1032 B intra),
    # leaders' Gatherv to the server (lg 3 = 2 rounds, 2 x 3 x 1032 B inter), Bcast to the
    # leaders (4 rounds, 2 x 1032 x 2/3 inter), Bcast on the node (4 rounds, 2 x 1032 x 2/3).
    want = (2 * 1e-6 + 2 * 1032 * 1e-10) + (2 * 10e-6 + 6 * 1032 * 1e-9) \
        + (4 * 10e-6 + 2 * 1032 * 2 / 3 * 1e-9) + (4 * 1e-6 + 2 * 1032 * 2 / 3 * 1e-10)
    assert total("hierarchical", 6, 2) == pytest.approx(want)
    # Forwarding puts the flat incast on the server's link; combining sends counts of
    # ceil(log2(m+1)) bits per coordinate per node.
    d = 8000
    sign = 32 + d // 8
    fwd = dict(P.exchange_stages(P.Layout("hierarchical", 64, 8), sign, sign))["leader gather"]
    flat = dict(P.exchange_stages(P.Layout("flat", 64, 8), sign, sign))["gather"]
    assert fwd[3] == pytest.approx(flat[3]) and fwd[2] < flat[2]  # fewer rounds at the server
    comb = dict(P.exchange_stages(P.Layout("hierarchical", 64, 8, combine=True, params=d),
                                  sign, sign))["leader gather"]
    assert comb[3] == pytest.approx(8 * (32 + 4 * d / 8))  # m = 8: counts 0..8, 4 bits
    assert [P.vote_count_bits(m) for m in (1, 2, 3, 4, 7, 8, 15, 16)] == [1, 2, 2, 3, 3, 4, 4, 5]
    # Emulated nodes on one host: every link is intra-node.
    emulated = P.Layout("hierarchical", 6, 2, hosts=1)
    assert P.exchange_row(emulated, 1032, 1032)[2:4] == pytest.approx([0, 0])


def test_allreduce_reference():
    for M in (2, 8):
        assert total("allreduce", M, up=4e6, down=4e6, net=P.Network.uniform(
            P.CostModel(1e-6, 1e-9, 3e-10))) == pytest.approx(
            P.allreduce_time(M, 4e6, P.CostModel(1e-6, 1e-9, 3e-10)))
    # 8 ranks on 2 nodes: reduce-scatter on the node (lg 4, 3/4 of 4 MB), Allreduce of the
    # node's pieces across nodes (2 lg 2 rounds, the node's link 2 x 4 MB x 1/2), allgather.
    want = 2 * (2 * 1e-6 + 3e6 * 1e-10) + 2 * 10e-6 + 4e6 * 1e-9
    assert total("allreduce", 8, 2, up=4e6, down=4e6) == pytest.approx(want)


def test_more_workers_never_faster_and_more_shards_less_incast():
    sizes = (32 + 25_600_000 // 8,) * 2
    for kind in ("flat", "sharded", "hierarchical"):
        times = [total(kind, M, max(1, M // 8), *sizes, servers=4 if kind == "sharded" else 1)
                 for M in (8, 16, 64, 256, 1024)]
        assert times == sorted(times), kind
    flat = total("flat", 256, 32, *sizes)
    assert total("sharded", 256, 32, *sizes, servers=8) < total("sharded", 256, 32, *sizes,
                                                                 servers=2) < flat


def test_layout_checks():
    with pytest.raises(ValueError, match="workers must be at least 1"):
        P.Layout("flat", 0)
    with pytest.raises(ValueError, match="nodes must be between 1 and the 4 workers"):
        P.Layout("flat", 4, 5)
    with pytest.raises(ValueError, match="servers must be at least 1"):
        P.Layout("sharded", 4, servers=0)
    with pytest.raises(ValueError, match="unknown exchange"):
        P.Layout("ring", 4)
    with pytest.raises(ValueError, match="combining"):
        P.Layout("flat", 4, combine=True, params=10)


def test_algorithm_sizes():
    d = 25_600_000
    assert P.algorithm_bytes("signum-mv", d, 4) == (32 + d / 8, 32 + d / 8)
    assert P.algorithm_bytes("fp32-ps", 10, 4) == (72, 72)
    up, down = P.algorithm_bytes("s3gd-mv", d, 4)
    # docs/benchmarks.md measured 291,528 up and 891,277 down at d = 25.6M, 4 workers
    assert up == pytest.approx(291_528, rel=0.01) and down == pytest.approx(891_277, rel=0.02)
    downs = [P.algorithm_bytes("s3gd-mv", d, m)[1] for m in (4, 16, 64, 256, 1024)]
    assert downs == sorted(downs) and downs[-1] <= 32 + 1.6 * d / 8 + 1
    with pytest.raises(ValueError, match="no message-size model"):
        P.algorithm_bytes("qsgd", d, 4)


def test_fit_across_topologies_recovers_both_links():
    layouts = [P.Layout("flat", 4, 2), P.Layout("flat", 8, 4), P.Layout("sharded", 8, 2,
               servers=2), P.Layout("serverless", 8, 2), P.Layout("hierarchical", 8, 2),
               P.Layout("flat", 3, 1), P.Layout("sharded", 6, 1, servers=3),
               P.Layout("serverless", 5, 1)]
    pts = []
    for i, layout in enumerate(layouts):
        for size in (4e3, 4e6):
            pts.append(P.Point(f"r{i}-{size:g}", layout.label, layout.workers + 1, size, size,
                               P.exchange_time(layout, size, size, NET)["total"], layout))
    result = P.fit(pts)
    assert set(result.fitted) == {"alpha", "beta", "alpha_inter", "beta_inter"}
    assert result.network.intra.alpha == pytest.approx(1e-6, rel=1e-6)
    assert result.network.intra.beta == pytest.approx(1e-10, rel=1e-6)
    assert result.network.inter.alpha == pytest.approx(10e-6, rel=1e-6)
    assert result.network.inter.beta == pytest.approx(1e-9, rel=1e-6)
    # One host only: the inter-node link is not fitted and copies the intra-node one.
    one = P.fit([pt for pt in pts if not pt.layout.multi_host])
    assert one.fitted == ("alpha", "beta") and one.network.inter == one.network.intra


def _set_attrs(path, **attrs):
    with h5py.File(path, "a") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


def test_topology_read_from_the_log(tmp_path):
    plain = make_log(tmp_path / "plain.h5", workers=4)
    with open_log(plain) as log:  # a log from before issue 18: flat, one server
        assert P.log_layout(log) == P.Layout("flat", 4, 1, hosts=1)
        assert P.point(log).topology == "ps"
    sharded = _set_attrs(make_log(tmp_path / "s2.h5", workers=4, d=1000), servers=2)
    with open_log(sharded) as log:
        assert P.log_layout(log).kind == "sharded" and P.log_layout(log).servers == 2
        # a worker's two pieces (one header each) priced as one whole message
        assert P.message_sizes(log)[0] == 32 + 4 * 1000 - 32
    hier = _set_attrs(make_log(tmp_path / "h.h5", workers=5), hierarchy="node",
                      ranks_per_node=2)
    with open_log(hier) as log:  # 6 ranks in blocks of 2: 3 nodes, one host
        layout = P.log_layout(log)
        assert (layout.kind, layout.nodes, layout.multi_host) == ("hierarchical", 3, False)
    # as the hierarchy branch writes it: the mode an attribute, K in the config
    hier = _set_attrs(make_log(tmp_path / "h2.h5", workers=4, d=640), hierarchy="node",
                      hierarchy_mode="combining",
                      config=json.dumps({"algorithm": "signum-mv", "ranks_per_node": 3}))
    with open_log(hier) as log:
        assert P.log_layout(log) == P.Layout("hierarchical", 4, 2, combine=True, params=640,
                                             hosts=1)
    none = _set_attrs(make_log(tmp_path / "all.h5", workers=3), servers="all")
    with open_log(none) as log:
        assert P.log_layout(log).kind == "serverless"
    bad = _set_attrs(make_log(tmp_path / "bad.h5", workers=3), servers="many")
    with open_log(bad) as log, pytest.raises(P.LogError, match="servers = 'many'"):
        P.log_layout(log)


def test_sharded_roles_in_measured_times(tmp_path):
    # servers 0, 1 (aggregate 1 ms and 2 ms); workers 2, 3 measure 5 ms and 4 ms: the last
    # to arrive exchanged for 4 ms, of which 2 ms waiting for the slower server's aggregate.
    n, w = 8, 4
    times = {p: np.zeros((n, w)) for p in PHASES}
    times["gather"][:] = [6e-3, 6e-3, 3e-3, 2e-3]
    times["bcast"][:] = [1e-3, 1e-3, 2e-3, 2e-3]
    times["aggregate"][:] = [1e-3, 2e-3, 0, 0]
    path = _set_attrs(make_log(tmp_path / "t.h5", workers=3, n=n, times=times), servers=2)
    with open_log(path) as log:
        assert P.comm_times(log, "worker-min") == pytest.approx(np.full(n, 2e-3))
        assert P.comm_times(log, "server") == pytest.approx(np.full(n, 7e-3))


BASE = ["project", "--recommend", "--intra-bandwidth", "200GB/s", "--inter-bandwidth",
        "100Gb/s", "--inter-latency", "5us", "--intra-latency", "2us"]


def test_recommend_cli_text_and_json():
    r = analyze(*BASE, "--workers", 64, "--nodes", 8, "--algorithm", "signum-mv", "--params",
                "25.6M")
    assert r.returncode == 0, r.stderr
    assert "64 workers on 8 nodes" in r.stdout and "fastest:" in r.stdout
    for name in ("flat", "sharded S=2", "sharded S=8", "serverless", "hierarchical forwarding",
                 "hierarchical combining", "fp32 allreduce (ref.)"):
        assert name in r.stdout, name
    r = analyze(*BASE, "--workers", 8, 1024, "--workers-per-node", 8, "--algorithm",
                "signum-mv", "--params", "25.6M", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    net = P.Network(P.CostModel(2e-6, 1 / 200e9), P.CostModel(5e-6, 1 / 12.5e9))
    d = 25_600_000
    for case, (M, n) in zip(doc["cases"], ((8, 1), (1024, 128))):
        assert (case["workers"], case["nodes"]) == (M, n)
        rows = {row["topology"]: row for row in case["rows"]}
        flat = P.exchange_time(P.Layout("flat", M, n), 32 + d / 8, 32 + d / 8, net)["total"]
        assert rows["flat"]["seconds"] == pytest.approx(flat)
        ranked = [row for row in case["rows"] if row["ranked"]]
        best = min(ranked, key=lambda row: row["seconds"])
        assert case["best"] == best["topology"]
        assert case["speedup_vs_flat"] == pytest.approx(flat / best["seconds"])
        assert not rows["fp32 allreduce"]["ranked"]
    assert "hierarchical forwarding" not in {row["topology"] for row in doc["cases"][0]["rows"]}
    # Given byte counts, one node: no inter-node bandwidth needed.
    r = analyze("project", "--recommend", "--workers", 4, "--intra-bandwidth", "10GB/s",
                "--uplink-bytes", "1MB", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["cases"][0]["rows"]
    assert rows[0]["uplink_bytes"] == 1e6 and rows[0]["downlink_bytes"] == 1e6
    assert rows[0]["seconds"] == pytest.approx(P.exchange_time(
        P.Layout("flat", 4), 1e6, 1e6, P.Network.uniform(P.CostModel(1e-6, 1e-10)))["total"])


def test_recommend_from_a_log(tmp_path):
    path = make_log(tmp_path / "fp32.h5", workers=2, d=1000)
    r = analyze(*BASE, str(path), "--workers", 16, "--nodes", 4)
    assert r.returncode == 0, r.stderr
    assert "fp32-ps, d = 1,000" in r.stdout and "16 workers on 4 nodes" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--workers", 0, "--algorithm", "signum-mv", "-d", "1M"], "--workers must be at least 1"),
    (["--workers", 4, "--nodes", 8, "--algorithm", "signum-mv", "-d", "1M"],
     "--nodes 8 exceeds --workers 4"),
    (["--workers", 4, "--algorithm", "signum-mv", "-d", "1M", "--intra-bandwidth", "fast"],
     "bad bandwidth 'fast'"),
    (["--workers", 4, "--algorithm", "signum-mv"], "needs --params"),
    (["--workers", 4, "--algorithm", "qsgd", "-d", "1M"], "no message-size model"),
    (["--workers", 4, "--algorithm", "signum-mv", "-d", "lots"], "bad --params 'lots'"),
    (["--workers", 4], "needs message sizes"),
    (["--workers", 4, "--uplink-bytes", "-3"], "bad byte count"),
    (["--workers", 4, "--servers", 0, "-d", "1M", "-a", "fp32-ps"], "--servers must be"),
    (["--workers", 4, "--workers-per-node", 0, "-d", "1M", "-a", "fp32-ps"],
     "--workers-per-node must be"),
])
def test_recommend_bad_input(args, message):
    r = analyze(*BASE, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr


def test_recommend_network_errors():
    common = ["project", "--recommend", "--workers", 16, "--nodes", 2, "-a", "signum-mv",
              "-d", "1M"]
    assert_clean_error(analyze(*common, "--intra-bandwidth", "100GB/s"),
                       "--inter-bandwidth for more than one node")
    assert_clean_error(analyze(*common, "--intra-bandwidth", "10Gb/s", "--inter-bandwidth",
                               "100Gb/s"), "faster than the intra-node link")
    assert_clean_error(analyze("project", "--workers", 4, "--json", "-B", 10,
                               "--fit", "x.h5"), "--json goes with --recommend")
    assert math.isfinite(P.parse_count("25.6M")) and P.parse_count("25.6M") == 25.6e6


def _bench_json(path, ranks, truth, d=1_000_000, **extra):
    """A ``hpcgrad bench exchange --json`` result whose fp32-ps exchange takes the model's
    time plus 3 ms of computation phases."""
    workers = ranks - 1
    size = 4 * d + H
    comm = P.exchange_time(P.Layout("flat", workers), size, size, truth)["total"]
    phases = {"encode": 1e-3, "gather": comm / 2, "aggregate": 1e-3, "bcast": comm / 2,
              "decode": 0.5e-3, "update": 0.5e-3}
    allreduce = P.allreduce_time(ranks, 4 * d, truth.intra)
    doc = {"params": d, "world_size": ranks, "workers": workers, "allreduce_s": allreduce,
           "algorithms": {"fp32-ps": {"total_s": comm + 3e-3, "phases_s": phases,
                                      "bytes_up_per_worker": size, "bytes_down": size},
                          "allreduce": {"total_s": allreduce + 5e-3, "allreduce_s": allreduce,
                                        "phases_s": dict(phases, gather=allreduce),
                                        "bytes_up_per_worker": 4 * d, "bytes_down": 4 * d}},
           **extra}
    path.write_text(json.dumps(doc))
    return path


def test_fit_and_holdout_on_bench_results(tmp_path):
    truth = P.Network.uniform(P.CostModel(alpha=30e-6, beta=2e-9))
    files = [_bench_json(tmp_path / f"b{p}.json", p, truth) for p in (3, 5, 9)]
    points = P.bench_points(files[0])
    assert {pt.name for pt in points} == {"b3:fp32-ps", "b3:allreduce"}
    r = analyze("project", "--fit", *files[:2], "--holdout", files[2])
    assert r.returncode == 0, r.stderr
    assert "alpha = 30 us" in r.stdout and "beta = 2e-09 s/B" in r.stdout, r.stdout
    held = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("held out")]
    assert len(held) == 2 and all(ln.split()[-1] in ("+0.0%", "-0.0%") for ln in held)
    # --recommend on the fitted links: one host, so every link is the fitted one
    r = analyze("project", "--recommend", "--fit", *files, "--workers", 8, "--uplink-bytes",
                "1MB", "--json")
    assert r.returncode == 0, r.stderr
    flat = json.loads(r.stdout)["cases"][0]["rows"][0]
    assert flat["seconds"] == pytest.approx(
        P.exchange_time(P.Layout("flat", 8), 1e6, 1e6, truth)["total"], rel=1e-6)
    sharded = P.bench_points(_bench_json(tmp_path / "s.json", 9, truth, servers=2))
    assert {pt.layout.kind for pt in sharded} == {"sharded", "allreduce"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"params": 5}')
    assert_clean_error(analyze("project", "--fit", bad, files[0]),
                       "not a 'hpcgrad bench exchange --json' result")
    assert_clean_error(analyze("project", "--fit", *files, "--workers", 64), "give RUN.h5")


def test_the_documented_table_is_the_model():
    """docs/analysis.md's projected table is what analysis/projection_figure.py prints now."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("projection_figure",
                                                  root / "analysis" / "projection_figure.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.table()
    assert table.count("\n") == 1 + 2 * 2 * 4  # header, rule, 2 algorithms x 2 networks x 4 M
    assert table in (root / "docs" / "analysis.md").read_text(encoding="utf-8")
