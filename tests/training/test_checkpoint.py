"""Checkpoints from the command line: the layout on disk, and resume refusing (exit 2, every
rank, one clear message) a checkpoint of another world size, model, algorithm or setting, or a
damaged one.  Exact resume is tested in tests/algorithms/test_ef_sgd_mpi.py."""

import shutil

import h5py
import pytest

from hpcgrad.training import checkpoint
from mpirun import run_mpi

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


def resume(tmp_path, directory, *options, n=3):
    return run_mpi(n, ["train", *QUICK, "--log", str(tmp_path / "resumed.h5"),
                       "--resume", str(directory), *options], timeout=120)


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


def test_resume_takes_the_newest_complete_checkpoint(saved, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(saved, copy)
    (copy / ".step-00000011.partial").mkdir()  # a job killed while writing
    assert checkpoint.find(copy) == copy / "step-00000010"
    assert checkpoint.find(copy / "step-00000005") == copy / "step-00000005"
    result = resume(tmp_path, copy)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "resumed.h5", "r") as f:
        assert list(f["steps/iteration"][...]) == [10, 11]


@pytest.mark.parametrize("options, n, message", [
    ([], 4, "world size: checkpoint 3, now 4"),
    (["--hidden", "17"], 3, "model: checkpoint has 6 tensors"),
    (["--lr", "0.2"], 3, "lr: checkpoint 0.1, now 0.2"),
    (["--compressor", "randomk"], 3, "compressor: checkpoint 'topk', now 'randomk'"),
    (["--algorithm", "fp32-ps", "--compressor", "identity"], 3, None),
])
def test_a_checkpoint_of_another_run_is_refused(saved, tmp_path, options, n, message):
    if options[:2] == ["--algorithm", "fp32-ps"]:
        # the settings check comes first: ef-sgd options on fp32-ps are refused as such
        options, message = ["--algorithm", "fp32-ps"], "algorithm: checkpoint ef-sgd, now fp32-ps"
        result = run_mpi(n, ["train", "--iterations", "12", "--quiet", "--hidden", "16",
                             "--algorithm", "fp32-ps", "--resume", str(saved),
                             "--log", str(tmp_path / "r.h5")], timeout=120)
    else:
        result = resume(tmp_path, saved, *options, n=n)
    assert result.returncode == 2, result.stderr
    assert "does not match this run" in result.stderr and message in result.stderr, \
        result.stderr
    assert "Traceback" not in result.stderr


def test_a_damaged_checkpoint_is_refused_before_training(saved, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(saved / "step-00000010", copy)
    (copy / "rank-00002.h5").write_bytes(b"not hdf5 at all")
    result = resume(tmp_path, copy)
    assert result.returncode == 2
    assert "rank-00002.h5" in result.stderr and "cannot be read" in result.stderr


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such directory"),
    (lambda d: d, "no complete checkpoint in it"),
])
def test_resume_from_a_directory_without_checkpoints(tmp_path, make, message):
    result = resume(tmp_path, make(tmp_path))
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_resume_past_the_last_iteration_is_refused(saved, tmp_path):
    result = run_mpi(3, ["train", *QUICK[2:], "--iterations", "10", "--quiet",
                         "--log", str(tmp_path / "r.h5"), "--resume", str(saved)], timeout=120)
    assert result.returncode == 2 and "leaves nothing to run" in result.stderr, result.stderr


def test_a_resumed_run_does_not_overwrite_an_existing_log(saved, tmp_path):
    first = saved.parent / "run.h5"  # the log of the run that wrote the checkpoints
    before = first.read_bytes()
    result = run_mpi(3, ["train", *QUICK, "--log", str(first), "--resume", str(saved)],
                     timeout=120)
    assert result.returncode == 2 and "exists (a log belongs to one run)" in result.stderr
    assert first.read_bytes() == before


def test_a_checkpoint_written_before_a_setting_existed_resumes(saved, tmp_path):
    """An algorithm added after a checkpoint was written brings settings the checkpoint does
    not name: they compare as their defaults, so the resume goes on."""
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
    result = resume(tmp_path, old)
    assert result.returncode == 0, result.stderr
    # Given a value, that setting is still refused: ef-sgd does not read it.
    changed = resume(tmp_path / "changed", old, "--terngrad-clip", "1")
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


@pytest.mark.parametrize("rank, dataset", [
    (0, "params/2.weight"),              # the server's parameters
    (2, "state/sgd.buffer/0.weight"),    # a worker's momentum
])
def test_a_flipped_byte_in_a_value_is_refused_naming_rank_file_and_dataset(
        saved, tmp_path, rank, dataset):
    copy = tmp_path / "ck"
    shutil.copytree(saved / "step-00000010", copy)
    damaged = copy / f"rank-{rank:05d}.h5"
    _flip_byte_in(damaged, dataset, offset_in_data=37)
    with h5py.File(damaged, "r") as f:  # still a readable HDF5 file: only a value changed
        assert f[dataset].shape
    result = resume(tmp_path, copy)
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


def test_a_checkpoint_of_format_1_resumes_with_a_warning(saved, tmp_path):
    """Written before checksums: resumed as before, with a warning that it is unverified."""
    old = tmp_path / "old"
    shutil.copytree(saved / "step-00000010", old)
    for path in old.glob("rank-*.h5"):
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 1
            f.visititems(lambda name, obj: [obj.attrs.__delitem__(k) for k in
                                            ("sha256", "attrs_sha256") if k in obj.attrs])
    result = resume(tmp_path, old)
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
