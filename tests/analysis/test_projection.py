"""hpcgrad.analysis.projection: the cost formulas on hand-computed numbers, the fit recovering
known alpha/beta, the measured-time readings, and ``hpcgrad analyze project``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from analysis_logs import analyze, assert_clean_error, make_log
from hpcgrad.analysis import open_log
from hpcgrad.analysis import projection as P
from hpcgrad.training.tracelog import PHASES

M = P.CostModel(alpha=1e-6, beta=1e-9, gamma=5e-10)


def test_formulas_on_hand_computed_numbers():
    assert [P.lg(p) for p in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]
    # Gather at p = 5 of 4 workers x 1000 B: 3 rounds x 1 us + 4000 B x 1 ns
    assert P.gather_time(5, 4000, M) == pytest.approx(3e-6 + 4e-6)
    # Bcast of 1000 B at p = 4: 2*2*1 us + 2 * 1000 * 3/4 * 1 ns
    assert P.bcast_time(4, 1000, M) == pytest.approx(4e-6 + 1.5e-6)
    # Allreduce of 8000 B at p = 8: 2*3 us + 2*8000*7/8 ns + 8000*7/8*0.5 ns
    assert P.allreduce_time(8, 8000, M) == pytest.approx(6e-6 + 14e-6 + 3.5e-6)
    ps = P.step_time("ps", 5, 1000, 2000, M)
    assert ps["gather"] == pytest.approx(P.gather_time(5, 4000, M))
    assert ps["bcast"] == pytest.approx(P.bcast_time(5, 2000, M))
    assert ps["total"] == pytest.approx(ps["gather"] + ps["bcast"])
    assert P.step_time("allreduce", 8, 8000, 0, M)["total"] == pytest.approx(23.5e-6)
    # The gather term equals targets.md's n (p-1)/p beta with n = p * b (root's empty block).
    p, b = 7, 12345.0
    assert P.gather_time(p, (p - 1) * b, P.CostModel(0, 1e-9)) == \
        pytest.approx(p * b * (p - 1) / p * 1e-9)
    with pytest.raises(ValueError, match="unknown topology"):
        P.step_time("ring", 4, 1, 1, M)


def test_fit_recovers_known_alpha_and_beta():
    truth = P.CostModel(alpha=40e-6, beta=0.8e-9)
    pts = [(f"r{p}", "ps", p, 4e6, 4e6, P.step_time("ps", p, 4e6, 4e6, truth)["total"])
           for p in (3, 4, 5)]
    pts.append(("small", "ps", 3, 1e3, 1e3, P.step_time("ps", 3, 1e3, 1e3, truth)["total"]))
    result = P.fit(pts)
    assert result.fitted == ("alpha", "beta")
    assert result.model.alpha == pytest.approx(40e-6, rel=1e-6)
    assert result.model.beta == pytest.approx(0.8e-9, rel=1e-6)
    for _, _, _, meas, pred in result.rows:
        assert pred == pytest.approx(meas, rel=1e-9)


def test_fit_with_allreduce_and_gamma():
    truth = P.CostModel(alpha=10e-6, beta=1e-9, gamma=0.3e-9)
    pts = [(f"a{p}-{n}", "allreduce", p, n, n, P.step_time("allreduce", p, n, n, truth)["total"])
           for p in (2, 4, 8) for n in (1e3, 4e6)]
    pts += [(f"ps{p}", "ps", p, 5e5, 5e5, P.step_time("ps", p, 5e5, 5e5, truth)["total"])
            for p in (3, 5)]
    result = P.fit(pts)
    assert result.fitted == ("alpha", "beta", "gamma")
    assert result.model.gamma == pytest.approx(0.3e-9, rel=1e-5)
    assert result.model.beta == pytest.approx(1e-9, rel=1e-5)
    # One message size only: gamma cannot be told from beta; fixed at 0, said so.
    one = [pt for pt in pts if pt[1] == "allreduce" and pt[3] == 4e6]
    result = P.fit(one)
    assert result.model.gamma == 0 and "not separable" in result.note
    assert result.model.beta == pytest.approx(1e-9 + 0.3e-9 / 2, rel=1e-3)


def test_fit_keeps_parameters_non_negative():
    pts = [("a", "ps", 3, 1e6, 1e6, 1e-3), ("b", "ps", 5, 1e6, 1e6, 1.5e-3),
           ("c", "ps", 9, 1e6, 1e6, 1.6e-3)]
    result = P.fit(pts)
    assert result.model.alpha >= 0 and result.model.beta >= 0
    with pytest.raises(ValueError, match="two world sizes"):
        P.fit(pts[:1])


def test_units():
    assert P.parse_bandwidth("100Gb/s") == pytest.approx(12.5e9)
    assert P.parse_bandwidth("100") == pytest.approx(12.5e9)
    assert P.parse_bandwidth("100gbit") == pytest.approx(12.5e9)
    assert P.parse_bandwidth("12.5GB/s") == pytest.approx(12.5e9)
    assert P.parse_bandwidth("800 Mb/s") == pytest.approx(1e8)
    assert P.parse_latency("2us") == pytest.approx(2e-6)
    assert P.parse_latency("2") == pytest.approx(2e-6)
    assert P.parse_latency("0.5ms") == pytest.approx(5e-4)
    for bad in ("fast", "10 parsecs", "-1Gb/s"):
        with pytest.raises(ValueError, match="bandwidth"):
            P.parse_bandwidth(bad)
    with pytest.raises(ValueError, match="latency"):
        P.parse_latency("2 fortnights")


def _times(n, w, **phases):
    return {p: np.tile(np.asarray(phases.get(p, [0.0] * w), float), (n, 1)) for p in PHASES}


def test_measured_time_readings(tmp_path):
    # rank 0 waits 5 ms for worker 2 (compute 6 ms vs worker 1's 4 ms); exchange 2 ms + 1 ms.
    n = 8
    t = _times(n, 3, compute=[0, 4e-3, 6e-3], gather=[7e-3, 3e-3, 1e-3],
               aggregate=[0.5e-3, 0, 0], bcast=[1e-3, 2.5e-3, 2e-3])
    path = make_log(tmp_path / "t.h5", n=n, times=t)
    with open_log(path) as log:
        assert P.comm_times(log, "server") == pytest.approx(np.full(n, 8e-3))
        # worker w: gather + bcast - rank 0's aggregate: 5 ms and 2.5 ms
        assert P.comm_times(log, "worker-min") == pytest.approx(np.full(n, 2.5e-3))
        assert P.comm_times(log, "worker-median") == pytest.approx(np.full(n, 3.75e-3))
        # exchange: rank 0's gather (7 ms) minus its wait for the last worker (6 ms) + bcast
        assert P.comm_times(log, "exchange") == pytest.approx(np.full(n, 2e-3))
        assert P.mean_comm_time(log, "exchange", skip=5) == pytest.approx(2e-3)


def _model_log(path, algorithm, workers, truth, size=4_000_000, n=12):
    """A log whose rank-0 exchange takes exactly the model's time (nobody waits)."""
    w = workers + 1
    topo = "allreduce" if algorithm == "allreduce" else "ps"
    p = w
    pred = P.step_time(topo, p, size, size, truth)
    t = _times(n, w, gather=[pred.get("gather", pred["total"])] * w,
               bcast=[pred.get("bcast", 0.0)] * w)
    return make_log(path, algorithm=algorithm, workers=workers, d=size // 4, n=n, times=t,
                    bytes_up=np.full((n, workers), size), bytes_down=np.full(n, size))


def test_project_fit_and_holdout_cli(tmp_path):
    truth = P.CostModel(alpha=50e-6, beta=1e-9)
    runs = [_model_log(tmp_path / f"fp32-w{w}.h5", "fp32-ps", w, truth) for w in (2, 3, 4, 6)]
    r = analyze("project", "--fit", *runs[:3], "--holdout", runs[3], "--workers", 64, 256)
    assert r.returncode == 0, r.stderr
    assert "alpha = 50 us" in r.stdout and "beta = 1e-09 s/B" in r.stdout
    held = [line for line in r.stdout.splitlines() if line.strip().startswith("held out")]
    assert len(held) == 1 and held[0].split()[-1] in ("+0.0%", "-0.0%")
    pred = P.step_time("ps", 7, 4e6, 4e6, truth)["total"] * 1e3
    assert f"{pred:.3f}" in held[0]
    rows = {int(line.split()[0]): line.split() for line in r.stdout.splitlines()
            if re.match(r"\s+(64|256)\s+\d+\s", line)}
    assert set(rows) == {64, 256}
    assert float(rows[64][2]) == pytest.approx(P.step_time("ps", 65, 4e6, 4e6, truth)["total"]
                                               * 1e3, rel=1e-3)
    assert float(rows[64][3]) == pytest.approx(
        P.step_time("allreduce", 64, 4e6, 4e6, truth)["total"] * 1e3, rel=1e-3)


def test_project_with_a_given_network(real_logs):
    r = analyze("project", real_logs["signum-mv"], "--workers", 64, 256, "--bandwidth",
                "100Gb/s", "--latency", "2us")
    assert r.returncode == 0, r.stderr
    with open_log(real_logs["signum-mv"]) as log:
        up, down = P.message_sizes(log)
        d = log.num_params
    model = P.CostModel(2e-6, 1 / 12.5e9)
    for w in (64, 256):
        line = next(ln for ln in r.stdout.splitlines() if re.match(rf"\s+{w}\s+{w + 1}\s", ln))
        ps, ar = float(line.split()[2]), float(line.split()[3])
        assert ps == pytest.approx(P.step_time("ps", w + 1, up, down, model)["total"] * 1e3,
                                   rel=1e-3, abs=1e-3)
        assert ar == pytest.approx(P.step_time("allreduce", w, 4 * d, 0, model)["total"] * 1e3,
                                   rel=1e-3, abs=1e-3)
    assert "measured at its own size (3 ranks)" in r.stdout
    r = analyze("project", real_logs["allreduce"], "--workers", 8, "-B", "10GB/s")
    assert r.returncode == 0 and "Allreduce of the logged buffer" in r.stdout, r.stderr


def test_project_bad_input(tmp_path, real_logs):
    assert_clean_error(analyze("project", real_logs["fp32-ps"], "--workers", 4), "--bandwidth")
    assert_clean_error(analyze("project", real_logs["fp32-ps"], "-P", 4, "-B", "fast"),
                       "bad bandwidth")
    assert_clean_error(analyze("project", "--fit", real_logs["fp32-ps"]), "two different")
    empty = make_log(tmp_path / "empty.h5", n=0, evals=())
    assert_clean_error(analyze("project", empty, "-P", 4, "-B", 100), "no steps logged")
