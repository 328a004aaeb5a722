"""``hpcgrad analyze`` as a command: bad files give one clear line, ``--follow`` tracks a live
log, and neither ``analyze`` nor ``train`` pays for what it does not use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis_logs import analyze, assert_clean_error, make_log
from test_reader import live_writer

HERE = Path(__file__).parent


@pytest.mark.parametrize("command", [["summary"], ["compare"], ["export", "--csv", "OUT"],
                                     ["plot", "-o", "OUT"], ["project", "-P", "4", "-B", "10"]])
def test_bad_files_give_a_clear_message(tmp_path, real_logs, command):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00garbage" * 100)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    v9 = make_log(tmp_path / "v9.h5")
    with h5py.File(v9, "a") as f:
        f.attrs["format_version"] = 9
    cut = tmp_path / "cut.h5"
    data = real_logs["fp32-ps"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    cases = [(tmp_path / "missing.h5", "no such file"), (junk, "not a readable HDF5 file"),
             (plain, "not an hpcgrad traffic log"), (v9, "unsupported format_version 9"),
             (cut, "cut.h5")]
    sub, *rest = command
    rest = [str(tmp_path / "out") if a == "OUT" else a for a in rest]
    for path, fragment in cases:
        assert_clean_error(analyze(sub, path, *rest), str(path.name), fragment)
    if sub == "summary":  # the same as a user sees it, from a separate process
        assert_clean_error(analyze(sub, cut, subprocess_=True), "cut.h5")


def test_usage_errors_are_argparse_errors():
    r = analyze("summary", subprocess_=True)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr
    r = analyze()
    assert r.returncode == 2 and "ANALYSIS" in r.stderr


def test_summary_follow_tracks_a_live_log(tmp_path):
    path = tmp_path / "live.h5"
    writer, say = live_writer(path, HERE)
    follower = None
    try:
        say("", "ready")
        say("3", "appended")
        follower = subprocess.Popen(
            [sys.executable, "-m", "hpcgrad", "analyze", "summary", str(path), "--follow",
             "0.1", "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        say("6", "appended")  # 9 of 9 steps: the follower stops by itself
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert "Traceback" not in err
        assert "live 9/9 steps" in out
        say("close", "closed")
    finally:
        for proc in (writer, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_analyze_needs_no_mpi_and_train_needs_no_pandas(tmp_path):
    path = make_log(tmp_path / "x.h5")
    code = ("import sys; from hpcgrad.cli import main; rc = main(['analyze', 'summary', %r]); "
            "assert 'mpi4py.MPI' not in sys.modules, 'analyze imported MPI'; sys.exit(rc)"
            % str(path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code = ("import sys; from hpcgrad.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('pandas', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_analysis_scripts_call_the_library(tmp_path):
    """The thin scripts in analysis/ run and print what the CLI prints."""
    root = HERE.parent.parent
    path = make_log(tmp_path / "x.h5")
    r = subprocess.run([sys.executable, str(root / "analysis" / "summarize.py"), str(path),
                        "--format", "csv"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == analyze("summary", path, "--format", "csv", subprocess_=True).stdout
