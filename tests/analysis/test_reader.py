"""hpcgrad.analysis.reader: tidy tables from real and synthetic logs; every bad file refused."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from analysis_logs import make_log
from hpcgrad.analysis import LogError, open_log
from hpcgrad.errors import HpcgradError
from hpcgrad.training.tracelog import PHASES


@pytest.mark.parametrize("name", ["signum-mv", "signum-mv-tie-zero", "s3gd-mv", "qsgd",
                                  "dq-sgd", "fp32-ps", "fp16-ps", "allreduce"])
def test_tables_of_a_real_run(real_logs, name):
    path = real_logs[name]
    with h5py.File(path, "r") as f:
        up, down = f["steps/bytes_up"][:], f["steps/bytes_down"][:]
        loss, d = f["steps/loss"][:], int(f.attrs["num_params"])
        gather = f["steps/time_gather"][:]
        ev_acc = f["eval/accuracy"][:]
    with open_log(path) as log:
        assert log.n == 20 and log.complete
        assert log.algorithm == name.replace("-tie-zero", "")
        assert log.topology == ("allreduce" if name == "allreduce" else "ps")
        assert log.num_workers == 2 and log.world_size == 3 and log.num_params == d
        assert isinstance(log.meta["config"], dict) and log.meta["phases"] == list(PHASES)
        steps = log.steps()
        assert list(steps.columns[:5]) == ["iteration", "bytes_up", "bytes_up_total",
                                           "bytes_down", "loss"]
        if name == "s3gd-mv":  # variable-length messages: per-step statistics in the tables
            assert {"nnz_up", "nnz_down", "union_size"} <= set(log.extra_step_datasets())
            assert {"nnz_up", "union_size"} <= set(steps.columns)
            assert "nnz_up" in log.worker_steps().columns
        np.testing.assert_array_equal(steps["iteration"], np.arange(20))
        np.testing.assert_allclose(steps["bytes_up"], up.mean(axis=1))
        np.testing.assert_array_equal(steps["bytes_up_total"], up.sum(axis=1))
        np.testing.assert_array_equal(steps["bytes_down"], down)
        np.testing.assert_allclose(steps["loss"], loss.mean(axis=1))
        ws = log.worker_steps()
        assert len(ws) == 40 and set(ws["worker"]) == {1, 2}
        np.testing.assert_array_equal(ws["bytes_up"], up.reshape(-1))
        pt = log.phase_times()
        assert len(pt) == 60 and list(pt.columns) == ["iteration", "rank", *PHASES]
        np.testing.assert_array_equal(pt["gather"], gather.reshape(-1))
        ev = log.evals()
        assert list(ev["iteration"]) == [10, 20]
        np.testing.assert_array_equal(ev["accuracy"], ev_acc)
        meta = log.meta_frame()
        assert "algorithm" in set(meta["attribute"])


def test_extra_step_datasets_are_tables_too(tmp_path):
    n, m = 6, 3
    nnz = np.arange(n * m).reshape(n, m) + 10
    up = 32 + nnz * 4
    path = make_log(tmp_path / "s3gd.h5", algorithm="s3gd-mv", workers=m, n=n, bytes_up=up,
                    bytes_down=np.arange(n) + 100,
                    extra={"nnz_up": nnz, "union_size": np.arange(n) * 2, "bits": np.full(n, 3)})
    with open_log(path) as log:
        assert log.extra_step_datasets() == ["bits", "nnz_up", "union_size"]
        steps = log.steps()
        np.testing.assert_allclose(steps["nnz_up"], nnz.mean(axis=1))
        np.testing.assert_array_equal(steps["union_size"], np.arange(n) * 2)
        np.testing.assert_array_equal(steps["bytes_down"], np.arange(n) + 100)
        np.testing.assert_array_equal(steps["bytes_up_total"], up.sum(axis=1))
        ws = log.worker_steps()
        np.testing.assert_array_equal(ws["nnz_up"], nnz.reshape(-1))


def test_empty_log_has_empty_tables(tmp_path):
    path = make_log(tmp_path / "empty.h5", n=0, evals=(), iterations=50)
    with open_log(path) as log:
        assert log.n == 0 and not log.complete
        assert len(log.steps()) == 0 and len(log.phase_times()) == 0 and len(log.evals()) == 0
        with pytest.raises(LogError, match="no steps logged"):
            log.require_steps()


def test_a_resumed_runs_log_is_complete_from_its_first_step(tmp_path):
    path = make_log(tmp_path / "resumed.h5", n=10, iterations=40)
    with open_log(path) as log:
        assert log.first_step == 0 and not log.complete
    with h5py.File(path, "a") as f:  # as runtime.train writes it after --resume
        f.attrs["first_step"] = 30
    with open_log(path) as log:
        assert log.first_step == 30 and log.complete


def _expect(path, fragment):
    with pytest.raises(LogError) as info:
        open_log(path)
    assert str(path) in str(info.value) and fragment in str(info.value)
    assert isinstance(info.value, HpcgradError)


def test_bad_files_are_refused_with_the_path_and_the_problem(tmp_path, real_logs):
    _expect(tmp_path / "nope.h5", "no such file")
    _expect(tmp_path, "directory")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all " * 64)
    _expect(junk, "not a readable HDF5 file")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    _expect(plain, "not an hpcgrad traffic log (no 'format' attribute")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    _expect(other, "format = 'something-else'")
    v2 = make_log(tmp_path / "v2.h5")
    with h5py.File(v2, "a") as f:
        f.attrs["format_version"] = 2
    _expect(v2, "unsupported format_version 2")
    nods = make_log(tmp_path / "nods.h5")
    with h5py.File(nods, "a") as f:
        del f["steps/bytes_down"]
    _expect(nods, "missing dataset(s) /steps/bytes_down")


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9])
def test_a_truncated_log_is_refused_on_open_or_read(tmp_path, real_logs, fraction):
    data = real_logs["fp32-ps"].read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(LogError) as info:
        with open_log(cut) as log:  # HDF5 may open a truncated file in SWMR mode ...
            log.steps(), log.phase_times(), log.evals()  # ... then reading fails
    assert str(cut) in str(info.value)


_WRITER = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from analysis_logs import make_log
log = make_log(sys.argv[1], n=0, evals=(), iterations=9, close=False)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "close":
        log.close(); print("closed", flush=True); break
    k = int(line); start = log.iteration.shape[0]
    log.append_steps(np.arange(start, start + k), np.full((k, 2), 4032), np.full(k, 4032),
                     np.ones((k, 2)), {p: np.full((k, 3), 1e-3) for p in log.times})
    print("appended", flush=True)
"""


def live_writer(path, here):
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(here)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def say(command, answer):
        if command:
            writer.stdin.write(command + "\n")
            writer.stdin.flush()
        line = writer.stdout.readline().strip()
        assert line == answer, f"writer said {line!r} (exit status {writer.poll()})"

    return writer, say


def test_a_log_still_being_written_is_read_and_refreshed(tmp_path):
    path = tmp_path / "live.h5"
    writer, say = live_writer(path, __import__("pathlib").Path(__file__).parent)
    try:
        say("", "ready")
        with open_log(path) as log:
            assert log.n == 0
            say("4", "appended")
            assert log.refresh() == 4 and len(log.steps()) == 4
            say("5", "appended")
            assert log.refresh() == 9 and log.complete
            assert log.steps()["bytes_up"].tolist() == [4032.0] * 9
        say("close", "closed")
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


def test_meta_decodes_json_attributes(tmp_path):
    path = make_log(tmp_path / "m.h5")
    with open_log(path) as log:
        assert log.meta["hostnames"] == ["h", "h", "h"]
        assert log.meta["config"] == {"algorithm": "fp32-ps"}
        assert json.loads(log.meta_frame().set_index("attribute").at["config", "value"]) == \
            {"algorithm": "fp32-ps"}


def test_a_log_whose_writer_was_killed_is_read_up_to_its_last_flush(tmp_path):
    path = tmp_path / "killed.h5"
    writer, say = live_writer(path, __import__("pathlib").Path(__file__).parent)
    try:
        say("", "ready")
        say("4", "appended")
    finally:
        writer.kill()  # SIGKILL: the file keeps HDF5's SWMR-writer flag
        writer.wait()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    with open_log(path) as log:
        assert log.swmr and log.n == 4 and not log.complete
        assert log.steps()["bytes_down"].tolist() == [4032] * 4
