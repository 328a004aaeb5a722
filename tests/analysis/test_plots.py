"""``hpcgrad analyze plot``: the expected PNG files, valid and of a sane size."""

from __future__ import annotations

import struct

import numpy as np

from analysis_logs import analyze, assert_clean_error, make_log

BASE = ["bytes_per_step.png", "cumulative_bytes_loss.png", "cumulative_bytes_accuracy.png",
        "phase_times.png"]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_plots_of_real_runs(real_logs, tmp_path):
    out = tmp_path / "figs"
    runs = [real_logs[k] for k in ("signum-mv", "fp32-ps", "fp16-ps", "allreduce")]
    r = analyze("plot", *runs, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for name in BASE:
        w, h = png_size(out / name)
        assert 400 <= w <= 3000 and 300 <= h <= 2000, (name, w, h)
        assert (out / name).stat().st_size > 10_000, name  # drawn, not blank
        assert f"wrote {out / name}" in r.stdout
    assert not (out / "step_sizes.png").exists()
    assert "step_sizes.png skipped" in r.stdout


def test_step_sizes_plot_of_a_real_s3gd_run(real_logs, tmp_path):
    r = analyze("plot", real_logs["s3gd-mv"], real_logs["signum-mv"], "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    w, h = png_size(tmp_path / "step_sizes.png")
    assert w > 600 and h > 400


def test_step_sizes_plot_when_the_log_has_them(tmp_path):
    n, m = 30, 3
    rng = np.random.default_rng(0)
    nnz = rng.integers(50, 100, size=(n, m))
    path = make_log(tmp_path / "s3gd.h5", algorithm="s3gd-mv", workers=m, n=n,
                    bytes_up=32 + nnz * 3, bytes_down=np.full(n, 500),
                    evals=((10, 2.0, 0.3), (20, 1.5, 0.5), (30, 1.2, 0.6)),
                    extra={"nnz_up": nnz, "union_size": nnz.sum(axis=1) // 2,
                           "bits": np.full(n, 2)})
    out = tmp_path / "figs"
    r = analyze("plot", path, "-o", out)
    assert r.returncode == 0, r.stderr
    w, h = png_size(out / "step_sizes.png")
    assert h > 450  # two panels: entries (nnz_up, union_size) and bits
    for name in BASE:
        png_size(out / name)


def test_plot_bad_input(tmp_path):
    empty = make_log(tmp_path / "empty.h5", n=0, evals=())
    assert_clean_error(analyze("plot", empty, "-o", tmp_path / "f"), "no steps logged")
    good = make_log(tmp_path / "good.h5", n=10)
    r = analyze("plot", good, empty, "-o", tmp_path / "g")
    assert r.returncode == 0 and "empty.h5: no steps logged; left out" in r.stdout, r.stderr
    assert_clean_error(analyze("plot", tmp_path / "missing.h5", "-o", tmp_path / "f"),
                       "missing.h5: no such file")
