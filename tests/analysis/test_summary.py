"""``hpcgrad analyze summary / compare / export``: figures checked against the HDF5 file read
independently with h5py."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pandas as pd
import pytest

from analysis_logs import analyze, assert_clean_error, make_log

ALL = ["signum-mv", "signum-mv-tie-zero", "s3gd-mv", "qsgd", "dq-sgd", "fp32-ps", "fp16-ps",
       "allreduce"]


def _csv(result, **kw) -> pd.DataFrame:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return pd.read_csv(io.StringIO(result.stdout), **kw)


def test_summary_figures_match_the_file(real_logs):
    paths = [real_logs[name] for name in ALL]
    table = _csv(analyze("summary", *paths, "--format", "csv"))
    assert list(table["run"]) == ALL
    for path, (_, row) in zip(paths, table.iterrows()):
        with h5py.File(path, "r") as f:
            up, down = f["steps/bytes_up"][:], f["steps/bytes_down"][:]
            d, n = int(f.attrs["num_params"]), up.shape[0]
            algorithm = f.attrs["algorithm"]
            acc, loss = f["eval/accuracy"][-1], f["eval/loss"][-1]
            compute = f["steps/time_compute"][:, 1:].mean()
        assert row["algorithm"] == algorithm and row["workers"] == 2 and row["params"] == d
        assert row["steps"] == n == 20
        assert row["MB up/worker"] == pytest.approx(up.sum(axis=0).mean() / 1e6)
        assert row["MB down/worker"] == pytest.approx(down.sum() / 1e6)
        assert row["bits/param up"] == pytest.approx(8 * up.sum() / up.shape[1] / n / d)
        assert row["x vs fp32 up"] == pytest.approx(4 * d * n / up.sum(axis=0).mean())
        assert row["x vs fp32 down"] == pytest.approx(4 * d * n / down.sum())
        assert row["final accuracy"] == pytest.approx(acc)
        assert row["final loss"] == pytest.approx(loss)
        assert row["compute ms"] == pytest.approx(compute * 1e3)
    by = table.set_index("run")
    assert by.at["signum-mv", "x vs fp32 up"] > 25          # 1 bit + 32-byte header
    assert by.at["signum-mv-tie-zero", "bits/param up"] > 1.9
    assert by.at["fp16-ps", "x vs fp32 up"] == pytest.approx(2, rel=0.01)
    assert np.isnan(by.at["allreduce", "bcast ms"])         # allreduce has no bcast phase
    assert by.at["s3gd-mv", "mean nnz_up"] > 0 and np.isnan(by.at["fp32-ps", "mean nnz_up"])
    # The text layout: one column per run, figures down the side.
    r = analyze("summary", *paths)
    assert r.returncode == 0 and r.stdout.splitlines()[0].split() == ALL
    r = analyze("summary", paths[0], "--rows", "--format", "text")
    assert r.returncode == 0 and r.stdout.splitlines()[0].split()[:2] == ["run", "algorithm"]
    j = json.loads(analyze("summary", paths[0], "--format", "json").stdout)
    assert j[0]["algorithm"] == "signum-mv"


def test_summary_reads_bytes_per_step(tmp_path):
    """Message sizes that change every step (S3GD-MV style) are summed, not assumed fixed."""
    up = np.array([[100, 300], [200, 400], [50, 50]])
    down = np.array([1000, 10, 10])
    path = make_log(tmp_path / "var.h5", algorithm="s3gd-mv", d=100, n=3, bytes_up=up,
                    bytes_down=down, extra={"nnz_up": up // 4, "union_size": [5, 6, 7]})
    row = _csv(analyze("summary", path, "--format", "csv")).iloc[0]
    assert row["MB up/worker"] == pytest.approx(550e-6)
    assert row["MB down/worker"] == pytest.approx(1020e-6)
    assert row["bits/param up"] == pytest.approx(8 * 550 / 3 / 100)
    assert row["mean union_size"] == pytest.approx(6)


def test_compare_ratios_and_mixed_algorithms(real_logs):
    a, b, c = real_logs["fp32-ps"], real_logs["signum-mv"], real_logs["allreduce"]
    table = _csv(analyze("compare", a, b, c, "--format", "csv"), keep_default_na=False)
    summary = _csv(analyze("summary", a, b, c, "--format", "csv")).set_index("run")
    by = table.set_index("run")
    assert by.at["fp32-ps", "MB up/worker"] == 1.0
    assert float(by.at["signum-mv", "MB up/worker"]) == pytest.approx(
        summary.at["signum-mv", "MB up/worker"] / summary.at["fp32-ps", "MB up/worker"])
    assert float(by.at["signum-mv", "MB up/worker"]) < 1 / 25
    assert by.at["allreduce", "bcast ms"] == "n/a"          # allreduce has no bcast phase
    r = analyze("compare", a, b, c)
    assert r.returncode == 0
    assert "ratios against fp32-ps" in r.stdout
    assert "bcast ms: not applicable to allreduce (allreduce)" in r.stdout
    assert "different algorithms" in r.stdout


def test_export_csv(real_logs, tmp_path):
    out = tmp_path / "csv"
    r = analyze("export", real_logs["signum-mv"], "--csv", out)
    assert r.returncode == 0, r.stderr
    steps = pd.read_csv(out / "steps.csv")
    with h5py.File(real_logs["signum-mv"], "r") as f:
        np.testing.assert_array_equal(steps["bytes_down"], f["steps/bytes_down"][:])
        np.testing.assert_allclose(steps["bytes_up"], f["steps/bytes_up"][:].mean(axis=1))
        np.testing.assert_allclose(pd.read_csv(out / "phase_times.csv")["bcast"],
                                   f["steps/time_bcast"][:].reshape(-1))
    assert len(pd.read_csv(out / "worker_steps.csv")) == 40
    assert list(pd.read_csv(out / "evals.csv")["iteration"]) == [10, 20]
    meta = pd.read_csv(out / "meta.csv").set_index("attribute")["value"]
    assert meta["algorithm"] == "signum-mv" and meta["format"] == "hpcgrad-traffic"


def test_empty_log(tmp_path):
    empty = make_log(tmp_path / "empty.h5", n=0, evals=(), iterations=30)
    assert_clean_error(analyze("summary", empty), "no steps logged")
    assert_clean_error(analyze("compare", empty, empty), "no steps logged")
    r = analyze("export", empty, "--csv", tmp_path / "out")
    assert r.returncode == 0 and "no steps logged" in r.stdout
    assert len(pd.read_csv(tmp_path / "out" / "steps.csv")) == 0
