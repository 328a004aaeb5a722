"""Bad input is refused before it costs memory: config files that are not small regular
UTF-8 files, and sizes whose arrays would not fit (hpcgrad/training/config.py load_file,
hpcgrad/workloads/footprint.py).  Compressed dataset files: tests/workloads/test_datasets.py."""

import os
import time

import pytest

from hpcgrad.errors import ConfigError
from hpcgrad.training.config import MAX_CONFIG_BYTES, build, load_file
from hpcgrad.workloads import footprint
from mpirun import run_mpi


def _fifo(tmp_path):
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)  # no writer: opening it for reading in blocking mode would wait forever
    return path


def _large(tmp_path):
    path = tmp_path / "large.toml"
    with open(path, "wb") as fh:
        fh.truncate(100 * 1000 * 1000)  # 100 MB (sparse: costs no disk)
    return path


def _binary(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"lr = 0.1\n\x89HDF\r\n\x1a\n\xff\xfe")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp: "/dev/zero", "is not a regular file"),
    (_fifo, "is not a regular file"),
    (lambda tmp: tmp, "is a directory"),
    (_large, "is 100.0 MB; a config file holds settings and may be at most 1024 KiB"),
    (_binary, r"is not UTF-8 text \(byte 0x89 at offset 9\)"),
])
def test_a_config_file_that_is_not_a_small_utf8_file_is_refused_at_once(tmp_path, make,
                                                                         message):
    path = str(make(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"config file '{path}' {message}"):
        load_file(path)
    assert time.perf_counter() - started < 1.0


def test_a_config_file_at_the_limit_is_read(tmp_path):
    path = tmp_path / "padded.toml"
    text = "lr = 0.1\n"
    path.write_text(text + "#" * (MAX_CONFIG_BYTES - len(text) - 1) + "\n")
    assert load_file(path) == {"lr": 0.1}


@pytest.mark.parametrize("settings, part, figure", [
    ({"hidden": 10**7}, "model", "--hidden 10000000"),
    ({"features": 10**9}, "dataset", "--features 1000000000"),
    ({"examples": 10**12}, "dataset", "--examples 1000000000000"),
    ({"classes": 10**9}, "dataset", "--classes 1000000000"),
    ({"flush_every": 10**10}, "log buffers", "--flush-every 10000000000"),
    ({"batch_size": 10**9}, "activations", "--batch-size 1000000000"),
    ({"vocab_size": 10**9, "dataset": "ag-news", "data_path": "x", "model": "embedding-bag"},
     "model", "--vocab-size 1000000000"),
    ({"algorithm": "dq-sgd", "dq_window": 2**31, "iterations": 2**32 - 1}, "dq window",
     "--dq-window 2147483648"),
])
def test_absurd_sizes_are_refused_with_the_figure_in_gb(settings, part, figure):
    config = build({}, settings)
    with pytest.raises(ConfigError, match=rf"need about [\d,.]+ GB of memory .*the largest "
                       rf"part, {part}: [\d,.]+ GB per rank, from .*{figure}"):
        footprint.check(config, 5, available=16 * 10**9)


def test_the_default_run_and_the_paper_workloads_fit_in_a_small_machine():
    for settings in ({}, {"model": "cnn", "dataset": "mnist", "data_path": "x"},
                     {"model": "resnet56", "dataset": "cifar100", "data_path": "x"}):
        config = build({}, settings)
        assert footprint.check(config, 9, available=2 * 10**9, ranks=9) is config
    assert footprint.parameters(build({}, {"model": "cnn", "dataset": "mnist",
                                           "data_path": "x"})) == 582_026


def test_the_ranks_of_a_node_share_its_memory():
    config = build({}, {"examples": 4 * 10**5})  # about 0.37 GB per rank
    assert footprint.check(config, 3, available=10**9, ranks=1)
    with pytest.raises(ConfigError, match="for 3 ranks on this node"):
        footprint.check(config, 3, available=10**9, ranks=3)


QUICK = ["--iterations", "5", "--quiet"]


@pytest.mark.parametrize("options, message", [
    (["--hidden", "10000000"], "from --hidden 10000000"),
    (["--examples", "1000000000000"], "from --examples 1000000000000"),
    (["--config", "/dev/zero"], "config file '/dev/zero' is not a regular file"),
])
def test_under_mpiexec_every_rank_stops_at_once_with_one_line(tmp_path, options, message):
    started = time.perf_counter()
    result = run_mpi(3, ["train", *QUICK, "--log", str(tmp_path / "run.h5"), *options],
                     timeout=90)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("hpcgrad")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "GB" in lines[0] or "config file" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "run.h5").exists()
    assert elapsed < 60, elapsed  # before: allocation tracebacks, or the kernel's OOM killer
