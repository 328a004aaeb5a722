"""The HDF5 traffic log (``hpcgrad.training.tracelog``, written by ``hpcgrad.training.runtime``).

``docs/log-format.md`` is the normative description these tests hold the code to.

Serial tests: the multi-rank runs are launched from here with ``mpirun.run_mpi`` (the venv's
``mpiexec``, with a timeout), so they run in a plain ``python -m pytest``. Launches are shared
between tests through a module-scoped cache: five launches in all (about 60 CPU seconds, mostly
``import torch`` on every rank; about 35 s on 2 idle cores).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpirun  # tests/mpirun.py; conftest.py puts tests/ on sys.path
from hpcgrad.training.tracelog import FORMAT, FORMAT_VERSION, PHASES, TrafficLog

HEADER = 32
ITERATIONS = 25
STEP_DATASETS = ("iteration", "bytes_up", "bytes_down", "loss") + tuple(f"time_{p}" for p in PHASES)
#: The error HDF5 gives a non-SWMR open of a file whose SWMR writer has not closed it.
OPEN_FOR_WRITE = "already open for write"


def body_length(algorithm: str, d: int) -> int:
    """Body bytes of one message, both directions (signum-mv with the default tie rule)."""
    return {"signum-mv": math.ceil(d / 8), "fp32-ps": 4 * d, "fp16-ps": 2 * d}[algorithm]


# --------------------------------------------------------------------------- launches


class Runs:
    """Finished ``hpcgrad train`` launches, keyed by their settings, each run once.

    The first ``get`` of a run in :data:`SHARED_JOB` runs every run of that list not yet done,
    one after another in one job (tests/mpirun.py's ``train_several``: the ranks start once).
    """

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[tuple, Path] = {}

    def _launch(self, ranks: int, algorithm: str, seed: int = 0, tag: str = "",
                record_messages: int = 0, extra: tuple = (), iterations: int = ITERATIONS):
        key = (ranks, algorithm, seed, tag, record_messages)
        path = self.root / f"{algorithm}-n{ranks}-s{seed}{tag}.h5"
        args = ["--algorithm", algorithm, "--seed", seed,
                "--iterations", iterations, "--flush-every", 10, "--eval-every", 10,
                "--record-messages", record_messages, "--log", path, "--quiet", *extra]
        return key, path, args

    def _check(self, ranks, path, result):
        assert result.returncode == 0, (
            f"hpcgrad train on {ranks} ranks exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}")
        assert path.is_file()

    def get(self, ranks: int, algorithm: str, **options) -> Path:
        """``extra``: more options (their launch needs a ``tag`` of its own)."""
        key, path, args = self._launch(ranks, algorithm, **options)
        if key in self.done:
            return self.done[key]
        shared = [self._launch(*spec[:2], **spec[2]) for spec in SHARED_JOB]
        if key in [k for k, _, _ in shared]:
            todo = [(k, p, a) for k, p, a in shared if k not in self.done and k[0] == ranks]
            results = mpirun.train_several(ranks, {str(k): (self.root, a) for k, p, a in todo},
                                           timeout=SHARED_JOB_TIMEOUT)
            for k, p, _ in todo:
                self._check(ranks, p, results[str(k)])
                self.done[k] = p
        else:
            result = mpirun.run_mpi(ranks, ["train", *args], timeout=100, cwd=self.root)
            self._check(ranks, path, result)
            self.done[key] = path
        return self.done[key]


#: Runs of :class:`Runs` made together, in one 3-rank job, as (ranks, algorithm, options).
#: ``signum-mv`` with tag ``-again`` is not among them: the determinism test compares it, run
#: by a job of its own, with the ``signum-mv`` run of this job.
SHARED_JOB = [
    (3, "signum-mv", {}),
    (3, "fp16-ps", {"record_messages": 3}),
    (3, "ef-sgd", {"tag": "-qsgd", "record_messages": 2, "iterations": 3,
                   "extra": ("--compressor", "qsgd", "--bits", "3", "--hidden", "16")}),
    (3, "signum-mv", {"seed": 1}),
]
SHARED_JOB_TIMEOUT = 250


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("tracelog-runs"))


def read_all(path: Path) -> dict:
    """Every dataset of a finished log, as arrays, plus the root attributes."""
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = dict(f.attrs)
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


# --------------------------------------------------------------------------- (1) the writer alone


ATTRS = {
    "algorithm": "signum-mv",
    "numpy_str": np.str_("fp16"),
    "world_size": 3,
    "num_params": np.int64(1234),
    "lr": 0.25,
    "cuda_aware": False,
    "hostnames": ["a", "b", "c"],
    "config": json.dumps({"seed": 7, "lr": 0.25}),
}


def _phase_rows(rows: int, ranks: int, base: float) -> dict:
    return {p: base + i + np.arange(rows * ranks, dtype=float).reshape(rows, ranks)
            for i, p in enumerate(PHASES)}


def test_writer_layout_dtypes_and_attributes(tmp_path):
    path = tmp_path / "log.h5"  # (a missing parent is refused: test_log_ownership.py)
    log = TrafficLog(path, attrs=ATTRS, num_workers=2, world_size=3, record_messages=2)
    try:
        log.append_steps([0, 1, 2], [[10, 11]] * 3, [20] * 3, [[1.0, 2.0]] * 3,
                         _phase_rows(3, 3, 0))
        log.append_steps([3, 4], [[10, 11]] * 2, [20] * 2, [[3.0, 4.0]] * 2,
                         _phase_rows(2, 3, 100))
        log.append_eval(5, 0.5, 0.75)
        up = [np.arange(5, dtype=np.uint8), np.arange(7, dtype=np.uint8) + 100]
        log.append_messages(0, up, np.full(3, 9, np.uint8))
        log.append_messages(1, [u + 1 for u in up], np.full(3, 8, np.uint8))
    finally:
        log.close()
    log.close()  # closing twice is harmless

    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == FORMAT == "hpcgrad-traffic"
        assert a["format_version"] == FORMAT_VERSION == 1
        assert json.loads(a["phases"]) == list(PHASES) == [
            "compute", "encode", "gather", "aggregate", "bcast", "decode", "update", "average"]
        assert f["final_params_sha256"][()] == b""  # written by finish() at the end of a run
        assert a["algorithm"] == "signum-mv" and isinstance(a["algorithm"], str)
        assert a["numpy_str"] == "fp16" and isinstance(a["numpy_str"], str)
        assert a["world_size"] == 3 and a["world_size"].dtype == np.int64
        assert a["num_params"] == 1234 and a["num_params"].dtype == np.int64
        assert a["lr"] == 0.25 and a["lr"].dtype == np.float64
        assert a["cuda_aware"] == False and a["cuda_aware"].dtype == np.bool_  # noqa: E712
        assert json.loads(a["hostnames"]) == ["a", "b", "c"]  # non-scalars are stored as JSON
        assert json.loads(a["config"]) == {"seed": 7, "lr": 0.25}

        s = f["steps"]
        assert sorted(s) == sorted(STEP_DATASETS)
        expect = {"iteration": ((5,), np.int64), "bytes_up": ((5, 2), np.int64),
                  "bytes_down": ((5,), np.int64), "loss": ((5, 2), np.float64)}
        expect.update({f"time_{p}": ((5, 3), np.float64) for p in PHASES})
        for name, (shape, dtype) in expect.items():
            ds = s[name]
            assert ds.shape == shape and ds.dtype == dtype, name
            assert ds.maxshape == (None, *shape[1:]) and ds.chunks is not None, name
        np.testing.assert_array_equal(s["iteration"][:], np.arange(5))
        np.testing.assert_array_equal(s["bytes_up"][:], [[10, 11]] * 5)
        np.testing.assert_array_equal(s["bytes_down"][:], [20] * 5)
        np.testing.assert_array_equal(s["loss"][:], [[1.0, 2.0]] * 3 + [[3.0, 4.0]] * 2)
        for i, p in enumerate(PHASES):
            np.testing.assert_array_equal(s[f"time_{p}"][:3], _phase_rows(3, 3, 0)[p])
            np.testing.assert_array_equal(s[f"time_{p}"][3:], _phase_rows(2, 3, 100)[p])

        e = f["eval"]
        assert {k: (e[k].shape, e[k].dtype) for k in e} == {
            "iteration": ((1,), np.int64), "loss": ((1,), np.float64),
            "accuracy": ((1,), np.float64)}
        assert (e["iteration"][0], e["loss"][0], e["accuracy"][0]) == (5, 0.5, 0.75)

        # /messages: message i of worker w is uplink_bytes[off:off + length] with
        # (off, length) = uplink_index[i, w]  (docs/log-format.md)
        m = f["messages"]
        assert m["uplink_index"].shape == (2, 2, 2) and m["downlink_index"].shape == (2, 2)
        assert m["uplink_bytes"].dtype == np.uint8 and m["downlink_bytes"].dtype == np.uint8
        np.testing.assert_array_equal(m["iteration"][:], [0, 1])
        for i in range(2):
            for w in range(2):
                off, length = m["uplink_index"][i, w]
                np.testing.assert_array_equal(m["uplink_bytes"][off:off + length], up[w] + i)
            off, length = m["downlink_index"][i]
            np.testing.assert_array_equal(m["downlink_bytes"][off:off + length], [9 - i] * 3)

    with h5py.File(path, "r", swmr=True) as f:  # the reader's recipe works on finished logs too
        assert f["steps/iteration"].shape == (5,)


def test_writer_without_messages_has_no_messages_group(tmp_path):
    log = TrafficLog(tmp_path / "l.h5", attrs={}, num_workers=1, world_size=2)
    log.close()
    with h5py.File(tmp_path / "l.h5", "r") as f:
        assert sorted(f) == ["eval", "final_params_sha256", "steps"]
        assert f["steps/bytes_up"].shape == (0, 1) and f["steps/time_update"].shape == (0, 2)


_WRITER = r"""
import sys
import numpy as np
from hpcgrad.training.tracelog import PHASES, TrafficLog

log = TrafficLog(sys.argv[1], attrs={"algorithm": "fp32-ps"}, num_workers=2, world_size=3)
done = 0

def add(rows):
    global done
    log.append_steps(np.arange(done, done + rows), np.full((rows, 2), 40), np.full(rows, 40),
                     np.ones((rows, 2)), {p: np.zeros((rows, 3)) for p in PHASES})
    done += rows

add(3)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "close":
        log.close()
        print("closed", flush=True)
        break
    add(int(line))
    print("appended", flush=True)
"""


def test_swmr_reader_follows_a_live_writer(tmp_path):
    """A reader in another process (as a user's would be) sees appended rows after refresh()."""
    path = tmp_path / "live.h5"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def say(command: str, answer: str) -> None:
        if command:
            writer.stdin.write(command + "\n")
            writer.stdin.flush()
        line = writer.stdout.readline().strip()
        assert line == answer, f"writer said {line!r} (exit status {writer.poll()})"

    try:
        say("", "ready")
        # While the writer holds it, a plain read-only open is refused ...
        with pytest.raises(OSError, match=OPEN_FOR_WRITE):
            h5py.File(path, "r")
        # ... and an SWMR read works.
        with h5py.File(path, "r", swmr=True) as f:
            steps = [f["steps"][name] for name in STEP_DATASETS]
            assert {ds.shape[0] for ds in steps} == {3}
            say("4", "appended")
            say("2", "appended")
            assert f["steps/iteration"].shape == (3,)  # the view is the one at open time ...
            for ds in steps:
                ds.refresh()  # ... until refreshed
            assert {ds.shape[0] for ds in steps} == {9}
            np.testing.assert_array_equal(f["steps/iteration"][:], np.arange(9))
            np.testing.assert_array_equal(f["steps/bytes_up"][:], np.full((9, 2), 40))
            assert f.attrs["algorithm"] == "fp32-ps"
        say("close", "closed")
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    with h5py.File(path, "r") as f:  # closed by its writer: any reader may open it
        assert f["steps/loss"].shape == (9, 2)


# --------------------------------------------------------------------------- (2) real runs


#: (ranks, algorithm, --record-messages); the fp16-ps run also serves the /messages test.
REAL_RUNS = [(3, "signum-mv", 0), (5, "fp32-ps", 0), (3, "fp16-ps", 3)]


@pytest.mark.timeout(SHARED_JOB_TIMEOUT + 60)  # the shared job, when it runs first
@pytest.mark.parametrize("ranks, algorithm, record", REAL_RUNS)
def test_real_run_log(runs, ranks, algorithm, record):
    path = runs.get(ranks, algorithm, record_messages=record)
    workers = ranks - 1
    log = read_all(path)
    a = log["attrs"]

    assert a["format"] == "hpcgrad-traffic" and a["format_version"] == 1
    assert json.loads(a["phases"]) == list(PHASES)
    assert a["algorithm"] == algorithm
    assert (a["world_size"], a["num_workers"], a["iterations"], a["seed"]) == (
        ranks, workers, ITERATIONS, 0)
    assert a["header_bytes"] == HEADER
    config = json.loads(a["config"])
    assert config["algorithm"] == algorithm and config["iterations"] == ITERATIONS
    assert config["flush_every"] == 10 and config["eval_every"] == 10 and config["seed"] == 0
    assert config["lr"] is not None and config["momentum"] is not None  # resolved defaults
    assert len(json.loads(a["hostnames"])) == ranks
    codec = {"signum-mv": "sign1", "fp32-ps": "fp32", "fp16-ps": "fp16"}[algorithm]
    assert a["uplink_codec"] == a["downlink_codec"] == codec
    for key in ("mpi_library", "mpi_version", "hpcgrad_version", "torch_version",
                "numpy_version", "created", "log_path"):
        assert isinstance(a[key], str) and a[key], key
    assert a["cuda_aware"] == False  # noqa: E712

    d = int(a["num_params"])
    assert d > 0
    n = ITERATIONS
    np.testing.assert_array_equal(log["steps/iteration"], np.arange(n))
    assert log["steps/iteration"].dtype == np.int64
    message = HEADER + body_length(algorithm, d)
    up, down = log["steps/bytes_up"], log["steps/bytes_down"]
    assert up.shape == (n, workers) and up.dtype == np.int64
    assert down.shape == (n,) and down.dtype == np.int64
    assert (up == message).all(), (np.unique(up), message)
    assert (down == message).all(), (np.unique(down), message)

    loss = log["steps/loss"]
    assert loss.shape == (n, workers) and loss.dtype == np.float64
    assert np.isfinite(loss).all() and (loss > 0).all()

    times = {p: log[f"steps/time_{p}"] for p in PHASES}
    for p, t in times.items():
        assert t.shape == (n, ranks) and t.dtype == np.float64, p
        assert np.isfinite(t).all() and (t >= 0).all(), p
    # The server (column 0) computes and encodes nothing; workers do not aggregate.
    for p in ("compute", "encode"):
        assert (times[p][:, 0] == 0).all(), p
    assert (times["aggregate"][:, 1:] == 0).all()
    # Every rank decodes the downlink for its replica (signum-mv's decode is fused into
    # the update, so its decode phase is only the timer's overhead).
    if algorithm != "signum-mv":
        assert (times["decode"] > 0).all()
    assert (times["compute"][:, 1:] > 0).all()
    assert (times["gather"] > 0).all() and (times["update"] > 0).all()

    np.testing.assert_array_equal(log["eval/iteration"], [10, 20, n])
    assert np.isfinite(log["eval/loss"]).all()
    assert ((log["eval/accuracy"] >= 0) & (log["eval/accuracy"] <= 1)).all()
    if record:
        assert log["messages/iteration"].shape == (record,)
    else:
        assert not any(name.startswith("messages") for name in log)  # only with --record-messages


def test_recorded_messages_are_the_wire_messages(runs):
    """--record-messages: message i of worker w sliced as the docs say is a valid wire message."""
    from hpcgrad.wire.codecs import decode_message

    path = runs.get(3, "fp16-ps", record_messages=3)
    with h5py.File(path, "r") as f:
        d = int(f.attrs["num_params"])
        length = HEADER + 2 * d
        m = f["messages"]
        np.testing.assert_array_equal(m["iteration"][:], [0, 1, 2])
        assert m["uplink_index"].shape == (3, 2, 2) and m["downlink_index"].shape == (3, 2)
        for i in range(3):
            for w in range(2):
                off, n = m["uplink_index"][i, w]
                assert n == length == f["steps/bytes_up"][i, w]
                header, values = decode_message(m["uplink_bytes"][off:off + n].tobytes())
                assert (header.step, header.sender, header.count) == (i, w + 1, d)
                assert values.shape == (d,) and np.isfinite(values).all()
            off, n = m["downlink_index"][i]
            assert n == length == f["steps/bytes_down"][i]
            header, _ = decode_message(m["downlink_bytes"][off:off + n].tobytes())
            assert (header.step, header.sender) == (i, 0)


def _doc_snippet(heading: str) -> str:
    """The first ```python block after ``heading`` in docs/log-format.md."""
    text = (Path(__file__).parents[2] / "docs" / "log-format.md").read_text()
    after = text[text.index(heading):]
    start = after.index("```python\n") + len("```python\n")
    return after[start: after.index("```", start)]


@pytest.mark.timeout(SHARED_JOB_TIMEOUT + 60)  # the shared job, when it runs first
def test_messages_snippet_of_the_doc_decodes_a_qsgd_log_as_written(runs):
    """The /messages snippet, run as the document prints it, decodes every recorded message of
    an ``ef-sgd --compressor qsgd`` run: a body cut into several tensors, which it can decode
    only with the ``segments`` the log holds (issue 21: such logs had none)."""
    path = runs.get(3, "ef-sgd", tag="-qsgd", record_messages=2, iterations=3,
                    extra=("--compressor", "qsgd", "--bits", "3", "--hidden", "16"))
    snippet = _doc_snippet("## `/messages`")
    with h5py.File(path, "r") as f:
        segments = json.loads(f.attrs["segments"])
        d = int(f.attrs["num_params"])
        assert len(segments) > 1 and sum(segments) == d
        assert (f.attrs["uplink_codec"], f.attrs["downlink_codec"]) == ("qsgd", "fp32")
        for i in range(2):
            for w in range(2):
                scope = {"f": f, "i": i, "w": w}
                exec(snippet, scope)  # noqa: S102  (the document's own code)
                up_header = scope["hpcgrad"].wire.codecs.decode_message(
                    scope["message"].tobytes(), segments=segments)[0]
                assert (up_header.codec, up_header.step, up_header.sender) == (7, i, w + 1)
                assert scope["length"] == f["steps/bytes_down"][i] == HEADER + 4 * d
                header, values = scope["header"], scope["values"]
                assert (header.codec, header.step, header.sender) == (1, i, 0)
                assert values.shape == (d,) and np.isfinite(values).all()


# --------------------------------------------------------------------------- (3) determinism


@pytest.mark.timeout(SHARED_JOB_TIMEOUT + 200)  # the shared job and a launch, when run alone
def test_same_seed_same_log_other_seed_other_losses(runs):
    first = read_all(runs.get(3, "signum-mv"))
    again = read_all(runs.get(3, "signum-mv", tag="-again"))
    other = read_all(runs.get(3, "signum-mv", seed=1))
    for name in ("steps/iteration", "steps/bytes_up", "steps/bytes_down", "steps/loss",
                 "eval/iteration", "eval/loss", "eval/accuracy", "final_params_sha256"):
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    assert len(first["final_params_sha256"]) == 64  # the same model, not only the same losses
    assert first["final_params_sha256"] != other["final_params_sha256"]
    configs = [json.loads(run["attrs"]["config"]) for run in (first, again)]
    for config in configs:
        config.pop("log")
    assert configs[0] == configs[1]
    assert first["steps/loss"].shape == other["steps/loss"].shape
    assert not np.array_equal(first["steps/loss"], other["steps/loss"])
    assert not np.array_equal(first["eval/loss"], other["eval/loss"])


# --------------------------------------------------------------------------- (4) a killed run


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Hydra puts its proxy and each rank in a session of its own,
    so the launcher's process group does not contain them)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _mpi_rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"PMI_RANK="):
            return int(item.split(b"=", 1)[1])
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _kill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL the launch: rank 0 (the log's writer) first, so that no rank gets to see a
    failed peer and close the log in an orderly way; then the other ranks, the proxy, and
    the launcher's process group. Waits until all of them are gone."""
    below = _descendants(proc.pid)
    below.sort(key=lambda pid: (_mpi_rank(pid) != 0, _mpi_rank(pid) is None))
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in below):
        assert time.monotonic() < deadline, f"processes {below} survived SIGKILL"
        time.sleep(0.05)


def _rows(path: Path) -> int:
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return f["steps/iteration"].shape[0]
    except (OSError, KeyError):  # not created yet, or not yet complete
        return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc")
def test_killed_run_is_readable_up_to_its_last_flush(tmp_path):
    path = tmp_path / "killed.h5"
    output = tmp_path / "output.txt"
    cmd = [mpirun.mpiexec_path(), "-n", "3", sys.executable, "-m", "mpi4py", "-m", "hpcgrad",
           "train", "--iterations", "100000", "--flush-every", "5", "--eval-every", "0",
           "--log", str(path), "--quiet"]
    with output.open("w") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=mpirun.mpi_env(), cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 80
        while _rows(path) < 10:
            assert proc.poll() is None, (
                f"the run ended early ({proc.returncode}):\n{output.read_text()[-3000:]}")
            assert time.monotonic() < deadline, (
                f"no 10 rows logged in time:\n{output.read_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        _kill_launch(proc)

    # The writer never closed the file, so HDF5 still sees its SWMR-write flag: a plain
    # open is refused (docs/log-format.md: open with swmr=True, or run `h5clear -s`) ...
    with pytest.raises(OSError, match=OPEN_FOR_WRITE):
        h5py.File(path, "r")
    # ... and an SWMR read sees every flushed row, consistently.
    with h5py.File(path, "r", swmr=True) as f:
        assert f.attrs["format"] == "hpcgrad-traffic" and f.attrs["format_version"] == 1
        assert f.attrs["iterations"] == 100000
        lengths = {name: f["steps"][name].shape[0] for name in STEP_DATASETS}
        n = lengths["iteration"]
        assert set(lengths.values()) == {n}, lengths
        assert n >= 10 and n % 5 == 0, n  # whole batches of --flush-every rows
        np.testing.assert_array_equal(f["steps/iteration"][:], np.arange(n))
        d = int(f.attrs["num_params"])
        assert (f["steps/bytes_up"][:] == HEADER + math.ceil(d / 8)).all()
        loss = f["steps/loss"][:]
        assert loss.shape == (n, 2) and np.isfinite(loss).all()
        for p in PHASES:
            t = f[f"steps/time_{p}"][:]
            assert t.shape == (n, 3) and (t >= 0).all(), p
        compute = f["steps/time_compute"][:]
        assert (compute[:, 0] == 0).all() and (compute[:, 1:] > 0).all()
