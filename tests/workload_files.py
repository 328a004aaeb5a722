"""Small dataset files in the real on-disk formats, for the reader and training tests.

* MNIST: IDX files written with ``struct`` (magic 0x00000803 / 0x00000801, big-endian dims);
* CIFAR-10 / CIFAR-100: pickled dicts in the layout of the python batches (``b'data'`` uint8
  N x 3072 with the R, G, B planes of each 32 x 32 image in a row, ``b'labels'`` or
  ``b'fine_labels'`` / ``b'coarse_labels'``);
* AG-News: ``train.csv`` / ``test.csv`` rows ``"class","title","description"``.

The images carry their class as a bright patch, so a few steps of training can learn them.
"""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(n: int, classes: int, shape: tuple, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) * 7 + seed) % classes
    images = rng.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    h = shape[-2]
    for i, c in enumerate(labels):
        row = (c * 3) % (h - 3)
        images[i, ..., row:row + 3, 2:8] = 250
    return images, labels.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(root, train: int = 64, test: int = 16, *, gz: bool = False,
                size: int = 28) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", train, 1), ("t10k", test, 2)):
        images, labels = _images(n, 10, (size, size), seed)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}"
            if gz:
                with gzip.open(root / (name + ".gz"), "wb") as fh:
                    fh.write(data)
            else:
                (root / name).write_bytes(data)
    return root


def cifar_dict(n: int, classes: int, seed: int, label_key: bytes = b"labels") -> dict:
    images, labels = _images(n, classes, (3, 32, 32), seed)
    batch = {b"batch_label": b"testing batch", b"data": images.reshape(n, 3072),
             label_key: [int(v) for v in labels],
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    return batch


def write_cifar10(root, per_batch: int = 16, test: int = 16, *,
                  subdir: str = "cifar-10-batches-py") -> Path:
    place = Path(root) / subdir if subdir else Path(root)
    place.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (place / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_dict(per_batch, 10, i), 2))
    (place / "test_batch").write_bytes(pickle.dumps(cifar_dict(test, 10, 9), 2))
    return Path(root)


def write_cifar100(root, train: int = 80, test: int = 20, *,
                   subdir: str = "cifar-100-python") -> Path:
    place = Path(root) / subdir if subdir else Path(root)
    place.mkdir(parents=True, exist_ok=True)
    (place / "train").write_bytes(pickle.dumps(cifar_dict(train, 100, 1, b"fine_labels"), 2))
    (place / "test").write_bytes(pickle.dumps(cifar_dict(test, 100, 2, b"fine_labels"), 2))
    return Path(root)


TOPICS = {1: ("world", "government minister election"), 2: ("sports", "team game season"),
          3: ("business", "stocks market profit"), 4: ("sci/tech", "software internet chip")}


def write_ag_news(root, train: int = 80, test: int = 20) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", train), ("test.csv", test)):
        with (root / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
            for i in range(n):
                label = i % 4 + 1
                topic, words = TOPICS[label]
                writer.writerow([label, f"News #{i}: {topic.upper()} story",
                                 f"The {words} report, item {i % 5}; more at 11."])
    return root
