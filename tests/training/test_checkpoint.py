"""Checkpoints from the command line: the layout on disk, and resume refusing (exit 2, every
rank, one clear message) a checkpoint of another world size, model, algorithm or setting, or a
damaged one.  Exact resume is tested in tests/algorithms/test_ef_sgd_mpi.py.

The resumes that end without aborting the job (refused: status 2 on every rank; or completed)
run one after another in one 3-rank job (``resumed``, tests/mpirun.py's ``train_several``):
each test's ``@prepares`` function builds its input and returns its command line, the test
reads its run's status, stdout and stderr.  Those that abort (status 1) or need 4 ranks launch
their own job.
"""

import shutil

import h5py
import pytest

from hpcgrad.training import checkpoint
from mpirun import run_mpi, train_several

QUICK = ["--iterations", "12", "--quiet", "--hidden", "16", "--eval-every", "0",
         "--algorithm", "ef-sgd", "--compressor", "topk"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 3-rank run that checkpointed after steps 5 and 10."""
    root = tmp_path_factory.mktemp("checkpoints")
    result = run_mpi(3, ["train", *QUICK, "--log", str(root / "run.h5"),
                         "--checkpoint-every", "5", "--checkpoint-dir", str(root / "ck")],
                     timeout=120)
    assert result.returncode == 0, result.stderr
    return root / "ck"


def resume_args(tmp_path, directory, *options):
    return [*QUICK, "--log", str(tmp_path / "resumed.h5"), "--resume", str(directory), *options]


def resume(tmp_path, directory, *options, n=3):
    return run_mpi(n, ["train", *resume_args(tmp_path, directory, *options)], timeout=120)


#: name -> function(saved, work directory) -> ``hpcgrad train`` arguments of one resume
PREPARE = {}
#: The one job of every prepared resume; pytest-timeout counts it against the first test.
SETUP_TIMEOUT = 400


def prepares(name):
    def register(function):
        assert name not in PREPARE, name
        PREPARE[name] = function
        return function
    return register


@pytest.fixture(scope="module")
def resumed(saved, tmp_path_factory):
    """name -> (work directory, finished run) of every ``@prepares`` resume, all in one job."""
    work = {name: tmp_path_factory.mktemp(name) for name in PREPARE}
    runs = {name: (work[name], prepare(saved, work[name])) for name, prepare in PREPARE.items()}
    done = train_several(3, runs, timeout=SETUP_TIMEOUT - 60)
    return {name: (work[name], done[name]) for name in PREPARE}


def test_layout_one_file_per_rank_per_step(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["step-00000005", "step-00000010"]
    files = sorted(p.name for p in (saved / "step-00000010").iterdir())
    assert files == ["rank-00000.h5", "rank-00001.h5", "rank-00002.h5"]
    with h5py.File(saved / "step-00000010" / "rank-00001.h5", "r") as f:
        assert f.attrs["format"] == "hpcgrad-checkpoint" and f.attrs["step"] == 10
        assert f.attrs["world_size"] == 3 and f.attrs["algorithm"] == "ef-sgd"
        # vectors of the model's length are stored per parameter name
        assert set(f["state/residual"]) == {"0.weight", "0.bias", "2.weight", "2.bias",
                                            "4.weight", "4.bias"}
        assert f["state/residual/0.weight"].shape == (16, 32)
        assert "params" not in f  # rank 0 holds the parameters
    with h5py.File(saved / "step-00000010" / "rank-00000.h5", "r") as f:
        assert f["params/0.weight"].shape == (16, 32)


@prepares("newest")
def _newest(saved, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(saved, copy)
    (copy / ".step-00000011.partial").mkdir()  # a job killed while writing
    return resume_args(tmp_path, copy)


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_resume_takes_the_newest_complete_checkpoint(resumed):
    tmp_path, result = resumed["newest"]
    copy = tmp_path / "ck"
    assert checkpoint.find(copy) == copy / "step-00000010"
    assert checkpoint.find(copy / "step-00000005") == copy / "step-00000005"
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "resumed.h5", "r") as f:
        assert list(f["steps/iteration"][...]) == [10, 11]


REFUSED = {"hidden": ["--hidden", "17"], "lr": ["--lr", "0.2"],
           "compressor": ["--compressor", "randomk"]}
for _name, _options in REFUSED.items():
    prepares(f"refused-{_name}")(
        lambda saved, tmp_path, options=_options: resume_args(tmp_path, saved, *options))


@prepares("refused-algorithm")
def _refused_algorithm(saved, tmp_path):
    # the settings check comes first: ef-sgd options on fp32-ps are refused as such
    return ["--iterations", "12", "--quiet", "--hidden", "16", "--algorithm", "fp32-ps",
            "--resume", str(saved), "--log", str(tmp_path / "r.h5")]


@pytest.mark.timeout(SETUP_TIMEOUT)
@pytest.mark.parametrize("case, n, message", [
    ("world-size", 4, "world size: checkpoint 3, now 4"),
    ("hidden", 3, "model: checkpoint has 6 tensors"),
    ("lr", 3, "lr: checkpoint 0.1, now 0.2"),
    ("compressor", 3, "compressor: checkpoint 'topk', now 'randomk'"),
    ("algorithm", 3, "algorithm: checkpoint ef-sgd, now fp32-ps"),
])
def test_a_checkpoint_of_another_run_is_refused(saved, request, tmp_path, case, n, message):
    if n == 4:  # a job of its own, of another size
        result = resume(tmp_path, saved, n=n)
    else:
        _, result = request.getfixturevalue("resumed")[f"refused-{case}"]
    assert result.returncode == 2, result.stderr
    assert "does not match this run" in result.stderr and message in result.stderr, \
        result.stderr
    assert "Traceback" not in result.stderr


@prepares("damaged")
def _damaged(saved, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(saved / "step-00000010", copy)
    (copy / "rank-00002.h5").write_bytes(b"not hdf5 at all")
    return resume_args(tmp_path, copy)


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_a_damaged_checkpoint_is_refused_before_training(resumed):
    _, result = resumed["damaged"]
    assert result.returncode == 2
    assert "rank-00002.h5" in result.stderr and "cannot be read" in result.stderr


prepares("missing-directory")(lambda saved, tmp_path: resume_args(tmp_path, tmp_path / "missing"))
prepares("empty-directory")(lambda saved, tmp_path: resume_args(tmp_path, tmp_path))


@pytest.mark.timeout(SETUP_TIMEOUT)
@pytest.mark.parametrize("case, message", [
    ("missing-directory", "no such directory"),
    ("empty-directory", "no complete checkpoint in it"),
])
def test_resume_from_a_directory_without_checkpoints(resumed, case, message):
    _, result = resumed[case]
    assert result.returncode == 2 and message in result.stderr, result.stderr


prepares("past-the-end")(lambda saved, tmp_path: [
    *QUICK[2:], "--iterations", "10", "--quiet", "--log", str(tmp_path / "r.h5"),
    "--resume", str(saved)])


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_resume_past_the_last_iteration_is_refused(resumed):
    _, result = resumed["past-the-end"]
    assert result.returncode == 2 and "leaves nothing to run" in result.stderr, result.stderr


@prepares("existing-log")
def _existing_log(saved, tmp_path):
    first = saved.parent / "run.h5"  # the log of the run that wrote the checkpoints
    (tmp_path / "before.h5").write_bytes(first.read_bytes())
    return [*QUICK, "--log", str(first), "--resume", str(saved)]


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_a_resumed_run_does_not_overwrite_an_existing_log(saved, resumed):
    tmp_path, result = resumed["existing-log"]
    first = saved.parent / "run.h5"
    assert result.returncode == 2 and "exists (a log belongs to one run)" in result.stderr
    assert first.read_bytes() == (tmp_path / "before.h5").read_bytes()


@prepares("older-settings")
def _older_settings(saved, tmp_path):
    import json

    old = tmp_path / "old"
    shutil.copytree(saved / "step-00000010", old / "step-00000010")
    dropped = "terngrad_clip"  # a setting of an algorithm added after the seed release
    for rank_file in (old / "step-00000010").glob("rank-*.h5"):
        with h5py.File(rank_file, "r+") as f:
            settings = json.loads(f.attrs["settings"])
            assert settings.pop(dropped) == 2.5
            # as that hpcgrad wrote it: the attributes' checksum covers what they hold
            checkpoint._seal_attrs(f, {"settings": json.dumps(settings)})
    return resume_args(tmp_path, old)


@prepares("older-settings-changed")
def _older_settings_changed(saved, tmp_path):
    _older_settings(saved, tmp_path)
    return resume_args(tmp_path / "changed", tmp_path / "old", "--terngrad-clip", "1")


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_a_checkpoint_written_before_a_setting_existed_resumes(resumed):
    """An algorithm added after a checkpoint was written brings settings the checkpoint does
    not name: they compare as their defaults, so the resume goes on."""
    _, result = resumed["older-settings"]
    assert result.returncode == 0, result.stderr
    # Given a value, that setting is still refused: ef-sgd does not read it.
    _, changed = resumed["older-settings-changed"]
    assert changed.returncode == 2 and "terngrad-clip" in changed.stderr, changed.stderr


def _flip_byte_in(path, dataset: str, offset_in_data: int = 0) -> None:
    """Flip one byte inside ``dataset``'s data in the HDF5 file itself (contiguous storage:
    its data lie at ``get_offset()``), leaving the file structure intact."""
    with h5py.File(path, "r") as f:
        start = f[dataset].id.get_offset()
        assert start is not None and f[dataset].nbytes > offset_in_data
    with open(path, "r+b") as fh:
        fh.seek(start + offset_in_data)
        byte = fh.read(1)
        fh.seek(start + offset_in_data)
        fh.write(bytes([byte[0] ^ 0x01]))


FLIPPED = [
    (0, "params/2.weight"),              # the server's parameters
    (2, "state/sgd.buffer/0.weight"),    # a worker's momentum
]
for _rank, _dataset in FLIPPED:
    @prepares(f"flipped-{_rank}")
    def _flipped(saved, tmp_path, rank=_rank, dataset=_dataset):
        copy = tmp_path / "ck"
        shutil.copytree(saved / "step-00000010", copy)
        _flip_byte_in(copy / f"rank-{rank:05d}.h5", dataset, offset_in_data=37)
        return resume_args(tmp_path, copy)


@pytest.mark.timeout(SETUP_TIMEOUT)
@pytest.mark.parametrize("rank, dataset", FLIPPED)
def test_a_flipped_byte_in_a_value_is_refused_naming_rank_file_and_dataset(
        resumed, rank, dataset):
    tmp_path, result = resumed[f"flipped-{rank}"]
    damaged = tmp_path / "ck" / f"rank-{rank:05d}.h5"
    with h5py.File(damaged, "r") as f:  # still a readable HDF5 file: only a value changed
        assert f[dataset].shape
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("hpcgrad:")]
    assert len(lines) == 1, result.stderr  # one line, from rank 0
    assert f"failed on rank {rank}" in lines[0] and damaged.name in lines[0], lines[0]
    assert f"dataset {dataset!r} fails its SHA-256 check" in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "resumed.h5").exists()  # refused before the log, before training


def test_a_changed_attribute_is_refused(saved, tmp_path):
    path = tmp_path / "rank-00001.h5"
    shutil.copy(saved / "step-00000010" / "rank-00001.h5", path)
    checkpoint.verify(path, 1)
    with h5py.File(path, "r+") as f:
        f["sampler"].attrs["cursor"] = f["sampler"].attrs["cursor"] + 1
    with pytest.raises(checkpoint.ConfigError, match="rank 1's checkpoint file .*rank-00001.h5"
                       ".*: the attributes of group 'sampler' fail"):
        checkpoint.verify(path, 1)


def test_every_kind_of_dataset_gets_a_checksum(tmp_path):
    """Scalars and empty arrays, which HDF5 cannot chunk (so Fletcher32 cannot cover them),
    are checked like the rest."""
    import numpy as np

    path = tmp_path / "kinds.h5"
    values = {"scalar": np.float64(0.5), "int": 7, "empty": np.zeros(0, np.float32),
              "matrix": np.arange(12, dtype=np.float32).reshape(3, 4),
              "bytes": np.frombuffer(b"\x00\x01\xff", np.uint8)}
    with h5py.File(path, "w") as f:
        for name, value in values.items():
            checkpoint._put(f, name, value)
        checkpoint._seal_attrs(f, {"step": 3})
    checkpoint.verify(path, 0)
    with h5py.File(path, "r+") as f:
        f["scalar"][()] = 0.25
    with pytest.raises(checkpoint.ConfigError, match="dataset 'scalar' fails its SHA-256"):
        checkpoint.verify(path, 0)


@prepares("format-1")
def _format_1(saved, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(saved / "step-00000010", old)
    for path in old.glob("rank-*.h5"):
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 1
            f.visititems(lambda name, obj: [obj.attrs.__delitem__(k) for k in
                                            ("sha256", "attrs_sha256") if k in obj.attrs])
    return resume_args(tmp_path, old)


@pytest.mark.timeout(SETUP_TIMEOUT)
def test_a_checkpoint_of_format_1_resumes_with_a_warning(resumed):
    """Written before checksums: resumed as before, with a warning that it is unverified."""
    _, result = resumed["format-1"]
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("content cannot be verified") == 1, result.stderr


def test_a_checkpoint_that_cannot_be_written_stops_the_job_with_one_line(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / ".step-00000005.partial").write_text("in the way")  # a file where rank 0 writes
    result = run_mpi(3, ["train", *QUICK, "--log", str(tmp_path / "run.h5"),
                         "--checkpoint-every", "5", "--checkpoint-dir", str(ck)], timeout=120)
    assert result.returncode == 1, result.stderr
    # (python -m mpi4py turns the exit status 1 into MPI_Abort at exit: MPICH's own lines)
    lines = [line for line in result.stderr.splitlines() if line.startswith("hpcgrad")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "HDF5" not in result.stderr
    assert lines[0].startswith("hpcgrad: error: cannot create the checkpoint directory")
    assert ".step-00000005.partial" in lines[0]
    with h5py.File(tmp_path / "run.h5", "r") as f:  # the log was flushed and closed
        assert list(f["steps/iteration"][...]) == [0, 1, 2, 3, 4]


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: a real file system that fills up (needs root; skipped otherwise)."""
    import os
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_under_the_checkpoints_stops_the_job_with_one_line(tmp_path, full_disk):
    """Before: h5py error stacks from every rank, and a segmentation fault."""
    result = run_mpi(3, ["train", *QUICK, "--hidden", "256", "--log", str(tmp_path / "run.h5"),
                         "--checkpoint-every", "5", "--checkpoint-dir", str(full_disk / "ck")],
                     timeout=120)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("hpcgrad")]
    assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr
    assert "cannot write its checkpoint file" in lines[0]
    assert "Traceback" not in result.stderr and "HDF5" not in result.stderr
    assert list((full_disk / "ck").iterdir()) == []  # the partial checkpoint removed
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert list(f["steps/iteration"][...]) == [0, 1, 2, 3, 4]
