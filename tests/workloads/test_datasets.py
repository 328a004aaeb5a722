"""Dataset readers on small files the tests write in the real formats, the synthetic task,
and the workload settings' validation (hpcgrad/workloads/datasets.py, hpcgrad/training/config.py)."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from hpcgrad.workloads import datasets
from hpcgrad import workloads
from hpcgrad.training.config import TrainConfig
from hpcgrad.errors import ConfigError

from workload_files import (cifar_dict, idx_bytes, write_ag_news, write_cifar10, write_cifar100,
                            write_mnist)


def config(**settings):
    return TrainConfig(**settings).resolved()


# --------------------------------------------------------------------------- synthetic


def test_default_synthetic_is_the_embedded_task():
    data = datasets.load(config())
    again = datasets.synthetic(0)
    assert data.train_x.shape == (16384, 32) and data.test_x.shape == (2048, 32)
    assert torch.equal(data.train_x, again.train_x) and torch.equal(data.test_y, again.test_y)
    assert data.kind == "vector" and data.num_features == 32 and data.num_classes == 10
    assert workloads.synthetic is datasets.synthetic and workloads.Dataset is datasets.Dataset


def test_synthetic_of_any_size_and_image_shape():
    data = datasets.load(config(examples=80, features="1x28x28", classes=3, seed=4))
    assert data.train_x.shape == (80, 1, 28, 28) and data.test_x.shape == (10, 1, 28, 28)
    assert data.kind == "image" and data.num_features == 784 and data.num_classes == 3
    assert set(data.train_y.tolist()) <= {0, 1, 2}
    wide = datasets.load(config(examples=16, features=1000))
    assert wide.train_x.shape == (16, 1000) and wide.test_x.shape == (2, 1000)


# --------------------------------------------------------------------------- mnist


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_read_back(tmp_path, gz):
    write_mnist(tmp_path, train=40, test=12, gz=gz)
    data = datasets.mnist(tmp_path)
    raw = datasets.read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")), 3)
    labels = datasets.read_idx(tmp_path / ("train-labels-idx1-ubyte" + (".gz" if gz else "")), 1)
    assert raw.shape == (40, 28, 28) and data.train_x.shape == (40, 1, 28, 28)
    assert data.test_x.shape == (12, 1, 28, 28) and data.train_x.dtype == torch.float32
    assert data.train_y.tolist() == labels.tolist() and data.num_classes == 10
    # per-channel normalisation with the training set's statistics
    assert abs(data.train_x.mean().item()) < 1e-4
    assert abs(data.train_x.std(unbiased=False).item() - 1) < 1e-4
    mean, std = raw.mean(), raw.std()
    expect = (raw[3].astype(np.float64) - mean) / std
    assert np.allclose(data.train_x[3, 0].numpy(), expect, atol=1e-5)


def test_mnist_in_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", train=20, test=10)
    assert len(datasets.mnist(tmp_path).train_y) == 20


def test_mnist_missing_file_names_it_and_the_place(tmp_path):
    write_mnist(tmp_path, train=20, test=10)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(ConfigError, match="expected the file t10k-labels-idx1-ubyte "
                                          r"\(or t10k-labels-idx1-ubyte.gz\) in .*MNIST/raw"):
        datasets.mnist(tmp_path)


def test_missing_or_wrong_data_path(tmp_path):
    with pytest.raises(ConfigError, match="data path .*nowhere' does not exist .*train-images"):
        datasets.mnist(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        datasets.cifar10(tmp_path / "file")
    with pytest.raises(ConfigError, match="expected the file data_batch_1 in .*cifar-10-batches"):
        datasets.cifar10(tmp_path)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad IDX magic number 0x00000903, expected "
                                            "0x00000803"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b[:10], "truncated IDX header"),
    (lambda b: b"\x00\x00", "truncated IDX file"),
    (lambda b: b + b"\x00", "trailing bytes"),
])
def test_corrupt_idx_files_are_named(tmp_path, corrupt, message):
    write_mnist(tmp_path, train=20, test=10)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ConfigError, match=f"train-images-idx3-ubyte: .*{message}"):
        datasets.mnist(tmp_path)


def test_corrupt_gzip_and_inconsistent_labels_are_named(tmp_path):
    write_mnist(tmp_path, train=20, test=10, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.gz: cannot be read"):
        datasets.mnist(tmp_path)
    with gzip.open(path, "wb") as fh:
        fh.write(idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(ConfigError, match="19 labels for the 20 images"):
        datasets.mnist(tmp_path)
    with gzip.open(path, "wb") as fh:
        fh.write(idx_bytes(np.full(20, 10, np.uint8)))
    with pytest.raises(ConfigError, match=r"label 10 outside 0..9"):
        datasets.mnist(tmp_path)


def test_mnist_train_and_test_image_sizes_must_match(tmp_path):
    write_mnist(tmp_path, train=20, test=10)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10, 20, 20),
                                                                         np.uint8)))
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte: images of 20x20, but"):
        datasets.mnist(tmp_path)


# --------------------------------------------------------------------------- cifar


@pytest.mark.parametrize("subdir", ["cifar-10-batches-py", ""])
def test_cifar10_batches_read_back(tmp_path, subdir):
    write_cifar10(tmp_path, per_batch=8, test=6, subdir=subdir)
    data = datasets.cifar10(tmp_path)
    assert data.train_x.shape == (40, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.kind == "image" and data.num_classes == 10 and data.name == "cifar10"
    first = cifar_dict(8, 10, 1)
    assert data.train_y[:8].tolist() == first[b"labels"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major
    image = first[b"data"][2].reshape(3, 32, 32).astype(np.float64)
    planes = np.concatenate([cifar_dict(8, 10, i)[b"data"] for i in range(1, 6)])
    planes = planes.reshape(-1, 3, 1024).astype(np.float64)
    mean, std = planes.mean(axis=(0, 2)), planes.std(axis=(0, 2))
    expect = (image - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(data.train_x[2].numpy(), expect, atol=1e-5)
    for c in range(3):
        assert abs(data.train_x[:, c].mean().item()) < 1e-4


def test_cifar100_uses_the_fine_labels(tmp_path):
    write_cifar100(tmp_path, train=30, test=10)
    data = datasets.cifar100(tmp_path)
    assert data.num_classes == 100 and data.train_x.shape == (30, 3, 32, 32)
    assert data.train_y.tolist() == cifar_dict(30, 100, 1, b"fine_labels")[b"fine_labels"]
    assert max(data.train_y.tolist()) > 19  # not the 20 coarse labels


def test_cifar_pickles_of_numpy_1_read_too(tmp_path):
    """The distributed batches name numpy.core.multiarray (numpy 2 writes numpy._core)."""
    write_cifar10(tmp_path, per_batch=4, test=4)
    for path in (tmp_path / "cifar-10-batches-py").iterdir():
        path.write_bytes(path.read_bytes().replace(b"numpy._core", b"numpy.core"))
    assert datasets.cifar10(tmp_path).train_x.shape == (20, 3, 32, 32)


def _corrupt_cifar(tmp_path, batch_bytes):
    write_cifar10(tmp_path, per_batch=4, test=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(batch_bytes)
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("payload, message", [
    (b"not a pickle at all", "data_batch_3: not a readable CIFAR python batch"),
    (pickle.dumps(cifar_dict(4, 10, 3), 2)[:-40], "data_batch_3: not a readable CIFAR"),
    (pickle.dumps([1, 2, 3]), "data_batch_3: expected a pickled dict"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)}), r"data_batch_3: no b'labels'"),
    (pickle.dumps({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}),
     r"b'data' must be a uint8 array of N x 3072 .*shape \(4, 1024\)"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}),
     "b'data' must be a uint8 array .*float32"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}),
     r"3 labels in b'labels' for 4 images"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}),
     r"labels must be in 0..9, found 0..10"),
    (pickle.dumps({b"data": _Evil(), b"labels": [0]}), "refusing to load posix.system"),
])
def test_corrupt_cifar_batches_are_named(tmp_path, payload, message):
    _corrupt_cifar(tmp_path, payload)
    with pytest.raises(ConfigError, match=message):
        datasets.cifar10(tmp_path)


# --------------------------------------------------------------------------- ag-news


def test_tokenizer_is_lowercase_alphanumeric_runs():
    assert datasets.tokenize("Wall St. Bears Claw Back Into the Black (Reuters)!") == [
        "wall", "st", "bears", "claw", "back", "into", "the", "black", "reuters"]
    assert datasets.tokenize("US#39;s 3.5% co-op\\n") == ["us", "39", "s", "3", "5", "co",
                                                          "op", "n"]


def test_vocabulary_is_top_n_by_count_then_text():
    docs = [["b", "a", "c"], ["a", "c"], ["a", "d"]]
    assert datasets.build_vocabulary(docs, 4) == {"a": 2, "c": 3}
    assert datasets.build_vocabulary(docs, 100) == {"a": 2, "c": 3, "b": 4, "d": 5}


def test_ag_news_csv_read_back(tmp_path):
    write_ag_news(tmp_path, train=40, test=12)
    data = datasets.ag_news(tmp_path, vocab_size=10)
    assert data.kind == "tokens" and data.num_classes == 4 and data.vocab_size == 10
    assert data.train_x.dtype == torch.int64 and len(data.train_x) == 40
    assert data.train_y[:4].tolist() == [0, 1, 2, 3]  # class index 1..4 -> 0..3
    assert int(data.train_x.max()) < 10
    # row 0: "News #0: WORLD story" + "The government minister election report, item 0; ..."
    tokens = datasets.tokenize("News #0: WORLD story The government minister election report, "
                               "item 0; more at 11.")
    vocab = datasets.build_vocabulary(
        [datasets.tokenize(" ".join(r)) for r in _rows(tmp_path / "train.csv")], 10)
    expect = [vocab.get(t, datasets.UNKNOWN) for t in tokens]
    assert data.train_x[0, :len(expect)].tolist() == expect
    assert (data.train_x[0, len(expect):] == datasets.PAD).all()
    assert (datasets.UNKNOWN in data.train_x[0].tolist())  # the cap leaves words out


def _rows(path):
    import csv
    with path.open(newline="") as fh:
        return [row[1:] for row in csv.reader(fh)]


def test_ag_news_keeps_the_first_max_tokens(tmp_path):
    (tmp_path / "train.csv").write_text('"1","a b c d e f","g h"\n"2","x","y"\n')
    (tmp_path / "test.csv").write_text('"2","x y z",""\n')
    data = datasets.ag_news(tmp_path, max_tokens=3)
    assert data.train_x.shape == (2, 3) and data.test_x.shape == (1, 3)
    assert data.train_y.tolist() == [0, 1] and data.num_classes == 2


@pytest.mark.parametrize("line, message", [
    ('"0","title","text"', "line 2: expected a class index >= 1"),
    ('"World","title","text"', "line 2: expected a class index >= 1"),
    ('"3"', "line 2: expected a class index >= 1"),
])
def test_bad_ag_news_rows_are_named(tmp_path, line, message):
    (tmp_path / "train.csv").write_text('"1","t","d"\n' + line + "\n")
    (tmp_path / "test.csv").write_text('"1","t","d"\n')
    with pytest.raises(ConfigError, match=f"train.csv, {message}"):
        datasets.ag_news(tmp_path)


def test_ag_news_test_class_unknown_to_training(tmp_path):
    (tmp_path / "train.csv").write_text('"1","t","d"\n"2","t","d"\n')
    (tmp_path / "test.csv").write_text('"3","t","d"\n')
    with pytest.raises(ConfigError, match="test.csv: class index 3 does not occur"):
        datasets.ag_news(tmp_path)
    (tmp_path / "test.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="test.csv: cannot be read as a UTF-8 CSV"):
        datasets.ag_news(tmp_path)


def test_ag_news_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="expected the file train.csv in .*ag_news_csv"):
        datasets.ag_news(tmp_path)


# --------------------------------------------------------------------------- load(config)


def test_load_reads_from_the_data_path_and_takes_the_first_examples(tmp_path):
    write_mnist(tmp_path, train=40, test=10)
    data = datasets.load(config(dataset="mnist", data_path=str(tmp_path), examples=30,
                                model="cnn"))
    assert data.train_x.shape == (30, 1, 28, 28) and len(data.test_y) == 10
    with pytest.raises(ConfigError, match="examples 41 is more than the 40 training examples"):
        datasets.load(config(dataset="mnist", data_path=str(tmp_path), examples=41))
    write_ag_news(tmp_path / "ag", train=40, test=8)
    text = datasets.load(config(dataset="ag-news", data_path=str(tmp_path / "ag"),
                                model="embedding-bag", vocab_size=5))
    assert text.vocab_size == 5


@pytest.mark.parametrize("settings, message", [
    ({"model": "vgg"}, "unknown model 'vgg'; choose one of: mlp, cnn, resnet20"),
    ({"dataset": "imagenet"},
     "unknown dataset 'imagenet'; choose one of: synthetic, digits, mnist"),
    ({"model": "cnn"}, "model cnn needs images .*but dataset synthetic has 32-feature vectors"),
    ({"model": "resnet20", "features": 64}, "model resnet20 needs images .*64-feature"),
    ({"model": "embedding-bag"}, "model embedding-bag needs token ids .*ag-news"),
    ({"model": "cnn", "dataset": "ag-news", "data_path": "/x"},
     "model cnn needs images .*dataset ag-news has token-id sequences"),
    ({"dataset": "mnist", "data_path": "/x"}, None),
    ({"dataset": "cifar10", "model": "mlp", "data_path": "/x"}, None),
    ({"model": "mlp", "dataset": "ag-news", "data_path": "/x"}, "model mlp needs feature"),
    ({"dataset": "mnist"}, "dataset mnist is read from files you already have: pass their "
                           "directory with --data-path"),
    ({"data_path": "/x"}, "data-path: --dataset synthetic is generated"),
    ({"dataset": "mnist", "data_path": "/x", "features": 10}, "features and classes shape"),
    ({"features": "3x32"}, "features must be an integer >= 1 or an image shape CxHxW"),
    ({"features": "0"}, "features must be"),
    ({"features": 0}, "features must be"),
    ({"classes": 1}, "classes must be an integer >= 2"),
    ({"examples": 0}, "examples must be an integer >= 1"),
    ({"vocab_size": 100}, "vocab-size is the vocabulary cap of --dataset ag-news"),
    ({"batch_norm": "none"}, "batch-norm: only resnet20 and resnet56 have batch norm"),
    ({"batch_norm": "group", "model": "resnet20", "features": "3x8x8"},
     "unknown batch-norm 'group'"),
    ({"model": ["cnn"]}, "model must be a string"),
    ({"partition": "dirichlet:0"}, r"dirichlet:alpha needs a number alpha > 0"),
    ({"partition": "dirichlet:abc"}, r"dirichlet:alpha needs a number alpha > 0"),
    ({"partition": "dirichlet:inf"}, r"dirichlet:alpha needs a number alpha > 0"),
    ({"partition": "shards:3"}, "partition must be 'iid', 'classes:L' .* or 'dirichlet:alpha'"),
])
def test_workload_settings_are_checked_before_training(settings, message):
    if message is None:
        config(**settings)
        return
    with pytest.raises(ConfigError, match=message):
        config(**settings)


def test_a_config_file_names_the_workload_settings(tmp_path):
    from hpcgrad.training import config as configuration
    path = tmp_path / "run.toml"
    path.write_text('model = "resnet20"\ndataset = "cifar10"\ndata-path = "/data"\n'
                    'batch-norm = "none"\nexamples = 100\npartition = "dirichlet:0.5"\n')
    cfg = configuration.build(configuration.load_file(path), {})
    assert (cfg.model, cfg.dataset, cfg.data_path, cfg.batch_norm, cfg.examples) == (
        "resnet20", "cifar10", "/data", "none", 100)


def test_idx_struct_layout_is_big_endian():
    data = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    assert struct.unpack(">IIII", data[:16]) == (0x803, 2, 3, 4) and len(data) == 16 + 24


def _gzip_bomb(path, header: bytes, zeros_mb: int) -> None:
    """``header`` then ``zeros_mb`` MB of zeros, as concatenated gzip members (which gzip
    readers inflate as one stream): a file of about 1 KB per MB it inflates to."""
    megabyte = gzip.compress(bytes(1 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header))
        for _ in range(zeros_mb):
            fh.write(megabyte)


BOMB_READER = """
import resource, sys, time
from hpcgrad.workloads import datasets
from hpcgrad.errors import ConfigError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    datasets.read_idx(sys.argv[1], 3)
except ConfigError as exc:
    print(exc)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"{grown / 1024:.0f} MB {time.perf_counter() - started:.2f} s")
"""


def test_a_gzip_bomb_is_refused_after_inflating_what_its_header_promised(tmp_path):
    """1 MB of .gz that inflates to 1 GB behind an MNIST header (60000 x 28 x 28 = 47 MB):
    refused as trailing data once the 47 MB are read, with the memory grown by far less
    than the 1 GB (before: all of it inflated on every rank, 2.6 GB peak)."""
    import subprocess
    import sys

    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_bomb(bomb, struct.pack(">IIII", 0x0803, 60000, 28, 28), zeros_mb=1024)
    assert bomb.stat().st_size < 2 << 20
    out = subprocess.run([sys.executable, "-c", BOMB_READER, str(bomb)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    message, measured = out.stdout.strip().splitlines()
    assert "train-images-idx3-ubyte.gz: more than the 47040016 bytes its header announces" \
        in message and "trailing bytes" in message, out.stdout + out.stderr
    assert int(measured.split()[0]) < 400, measured  # 47 MB of data read, not 1 GB


def test_an_idx_header_promising_more_than_memory_is_refused_before_reading(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_bomb(path, struct.pack(">IIII", 0x0803, 0xFFFFFFFF, 0xFFFF, 0xFFFF), zeros_mb=1)
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte.gz: its header announces "
                       r"4294967295x65535x65535 bytes \([\d,.]+ GB\), more than the .* GB"):
        datasets.read_idx(path, 3)


def test_a_cifar_batch_larger_than_memory_is_refused_unread(tmp_path):
    from hpcgrad.workloads import footprint

    write_cifar10(tmp_path)
    batch = next(tmp_path.rglob("data_batch_1"))
    with open(batch, "wb") as fh:  # sparse: as large as the memory, costs no disk
        fh.truncate(int(footprint.available_bytes()) + (1 << 30))
    with pytest.raises(ConfigError, match=r"data_batch_1: [\d,.]+ GB, more than the [\d,.]+ GB "
                                          "of memory usable"):
        datasets.cifar10(tmp_path)
