"""``hpcgrad bench ...``: runs under mpiexec, writes the stable JSON keys, and turns bad
input into a clear message and exit status 2 (never a traceback, never a hang).

Benchmarks are not timed tests: only the presence and sanity of the figures is checked.
"""

import json
import math

import pytest
from mpirun import run_mpi

from hpcgrad.cli import main


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _no_traceback(proc):
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def test_exchange_under_mpiexec_writes_stable_json_keys(tmp_path):
    path = tmp_path / "ex.json"
    proc = run_mpi(3, ["bench", "exchange", "--params", "20000", "--repeat", "2", "--warmup",
                       "1", "--micro-repeat", "1", "--json", str(path)])
    assert proc.returncode == 0, proc.stderr
    assert "vs Allreduce" in proc.stdout
    data = json.loads(path.read_text())
    from hpcgrad.algorithms import REGISTRY
    from hpcgrad.bench.exchange import selected
    expected = selected()
    assert "signsgd-mv" in expected and "allreduce" in expected
    assert set(REGISTRY) <= set(expected)  # every registered algorithm, with no list to edit
    assert sorted(data["ratio_vs_allreduce"]) == sorted(expected)
    for name in expected:
        assert _positive(data["ratio_vs_allreduce"][name]), name
        assert _positive(data["algorithms"][name]["total_s"]), name
    for key in ("pack_vs_copy", "vote_vs_floor", "decode_vs_copy", "allreduce_s"):
        assert _positive(data[key]), key
    assert data["world_size"] == 3 and data["params"] == 20000
    signum = data["algorithms"]["signum-mv"]
    assert signum["bytes_up_per_worker"] == 32 + (20000 + 7) // 8  # header + packed signs


def test_exchange_through_node_leaders_reports_rank_0s_incast(tmp_path):
    path = tmp_path / "node.json"
    proc = run_mpi(5, ["bench", "exchange", "--params", "20000", "--repeat", "1", "--warmup",
                       "0", "--no-micro", "--algorithm", "signum-mv", "--algorithm", "fp32-ps",
                       "--hierarchy", "node", "--ranks-per-node", "5", "--json", str(path)])
    assert proc.returncode == 0, proc.stderr
    assert "--hierarchy node, --ranks-per-node 5" in proc.stdout
    data = json.loads(path.read_text())
    assert data["hierarchy"] == "node" and data["ranks_per_node"] == 5
    signum, fp32 = data["algorithms"]["signum-mv"], data["algorithms"]["fp32-ps"]
    # one node of 4 workers: the leader sends 3 planes of counts; fp32-ps forwards all 4
    assert signum["bytes_received_by_server"] == 32 + 2 * 2504 + (20000 + 7) // 8
    assert fp32["bytes_received_by_server"] == 4 * (32 + 4 * 20000)
    proc = run_mpi(3, ["bench", "exchange", "--params", "1000", "--no-micro", "--hierarchy",
                       "node", "--ranks-per-node", "1"])
    assert proc.returncode == 2 and "nothing to combine" in proc.stderr
    _no_traceback(proc)


@pytest.mark.parametrize("args, message", [
    (["--params", "1000"], "at least 2 MPI ranks"),
])
def test_exchange_world_of_one_is_a_clear_error(args, message):
    proc = run_mpi(1, ["bench", "exchange", *args])
    assert proc.returncode == 2
    assert message in proc.stderr
    _no_traceback(proc)


@pytest.mark.parametrize("params, message", [
    ("1e13", "of memory"),
    ("0", "--params must be a whole number >= 1"),
])
def test_exchange_bad_params_are_refused_before_allocating(params, message):
    proc = run_mpi(2, ["bench", "exchange", "--params", params], timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert proc.stderr.count("error:") == 1  # rank 0 speaks for all
    _no_traceback(proc)


def test_micro_in_process_writes_stable_keys(tmp_path, capsys):
    path = tmp_path / "micro.json"
    assert main(["bench", "micro", "--params", "10000", "--workers", "2,5", "--repeat", "1",
                 "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    for key in ("pack_vs_copy", "vote_vs_floor", "decode_vs_copy", "numpy_packbits_vs_copy"):
        assert _positive(data[key]), key
    assert set(data["vote"]) == {"2", "5"}
    assert set(data["server"]) == {"fp32", "fp16", "qsgd4", "scaled_sign"}
    for name, figures in data["server"].items():
        assert figures["workers"] == 2, name
        for key in ("seconds", "floor_s", "vs_floor", "unfused_s", "speedup_vs_unfused"):
            assert _positive(figures[key]), (name, key)
    out = capsys.readouterr().out
    assert "vote M=5" in out and "qsgd mean, 4 bits M=2" in out


@pytest.mark.parametrize("argv, message", [
    (["--params", "0"], "--params must be a whole number"),
    (["--params", "lots"], "--params must be a count"),
    (["--params", "1e13"], "of memory"),
    (["--params", "1000", "--workers", "0"], "--workers must be >= 1"),
])
def test_micro_bad_input(argv, message, capsys):
    assert main(["bench", "micro", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_world_of_one_overhead_is_a_clear_error():
    proc = run_mpi(1, ["bench", "overhead"])
    assert proc.returncode == 2 and "at least 2 MPI ranks" in proc.stderr
    _no_traceback(proc)


def test_sparse_reports_bits_against_the_entropy_bound(tmp_path, capsys):
    path = tmp_path / "sparse.json"
    assert main(["bench", "sparse", "--params", "50000", "--densities", "0.01,0.1",
                 "--repeat", "1", "--json", str(path)]) == 0
    assert "bits/entry" in capsys.readouterr().out
    rows = json.loads(path.read_text())["results"]
    assert [(r["params"], r["density"]) for r in rows] == [(50000, 0.01), (50000, 0.1)]
    for r in rows:
        assert r["k"] == round(r["density"] * 50000)
        # bits per entry can't beat the entropy bound (+1 sign bit) by construction
        assert r["entropy_bits_per_entry"] <= r["bits_per_entry"] < 33
        for key in ("encode_vs_copy", "decode_vs_copy", "threshold_vs_torch_topk"):
            assert _positive(r[key]), key


@pytest.mark.parametrize("args, message", [
    (["--densities", "0"], "--densities must be in (0, 1]"),
    (["--params", "1e13"], "of memory"),
])
def test_sparse_bad_input_is_a_clear_error(args, message, capsys):
    assert main(["bench", "sparse", *args]) == 2
    assert message in capsys.readouterr().err
