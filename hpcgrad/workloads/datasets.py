"""Datasets as in-memory tensors: the embedded synthetic task, and readers for data on disk.

``--dataset``:

* ``synthetic`` (the default, no files): a C-class problem generated from the seed. Inputs
  are Gaussian, labels come from a fixed random two-layer "teacher" network, so a small MLP
  learns it well but not perfectly within a few hundred steps. Any size: ``--examples N``
  training examples (N/8 held out), ``--features F`` (or ``CxHxW`` for image-shaped inputs),
  ``--classes C``. The defaults (16384, 32, 10) are the embedded task.
* ``digits`` (no files; the ``digits`` extra): scikit-learn's bundled copy of the UCI
  handwritten digits, 1,797 real 8x8 scans of 16 grey levels, 10 classes
  (``sklearn.datasets.load_digits``, inside the wheel, never downloaded). Split once and for
  all, whatever ``--seed``: a fifth of each class (rounded) is the test set, drawn with
  :data:`DIGITS_SPLIT_SEED`, so 1,438 train / 359 test. Normalised as the images below.
* ``mnist``: the IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each also as ``.gz``) in
  ``--data-path`` or its ``MNIST/raw``. Any IDX set of 10 classes in that layout works
  (Fashion-MNIST, KMNIST).
* ``cifar10``: the python pickle batches ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch`` in ``--data-path/cifar-10-batches-py`` or ``--data-path`` itself.
* ``cifar100``: the pickles ``train`` and ``test`` (fine labels, 100 classes) in
  ``--data-path/cifar-100-python`` or ``--data-path``.
* ``ag-news``: ``train.csv`` and ``test.csv`` (rows: class index 1..C, title, description;
  no header) in ``--data-path`` or its ``ag_news_csv``.

Nothing is downloaded. Images become float32 ``N x C x H x W`` tensors normalised per channel
with the mean and standard deviation of the whole training set (also when ``--examples``
takes only the first N; computed exactly from byte histograms, so every rank gets the same
bits). Text becomes ``N x T`` int64 token ids
(see :func:`tokenize` and :func:`ag_news`), 0 = padding, 1 = a word outside the vocabulary.

CIFAR pickles are read with an unpickler that only accepts numpy arrays, so a foreign pickle
cannot run code.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import pickle
import re
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import footprint
from .catalog import DIGITS_MISSING, parse_features
from ..errors import ConfigError

#: Defaults of the synthetic task (the embedded default run).
SYNTHETIC_EXAMPLES, SYNTHETIC_FEATURES, SYNTHETIC_CLASSES = 16384, 32, 10
#: ag-news: at most this many tokens of a document are kept (title, then description).
MAX_TOKENS = 128
#: ag-news: default embedding-table rows (padding, unknown, then the most frequent words).
VOCAB_SIZE = 20000
PAD, UNKNOWN = 0, 1
#: digits: the seed of its fixed train/test split, and the share of each class held out.
DIGITS_SPLIT_SEED, DIGITS_TEST_SHARE = 1797, 0.2
#: --validation-fraction: the seed of the draw (fixed: the same examples for every --seed).
VALIDATION_SEED = 2021


@dataclass
class Dataset:
    """A training and a test set in memory.

    ``train_x`` is ``N x F`` float32 (vectors), ``N x C x H x W`` float32 (images) or
    ``N x T`` int64 token ids (text, 0 = padding; ``vocab_size`` rows of embedding needed).
    Labels are int64 class indices in ``0 .. num_classes - 1``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    name: str = "custom"
    vocab_size: int = 0
    #: A validation set carved from the training set (``--validation-fraction``), or None.
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    @property
    def num_features(self) -> int:
        """Inputs per example (an image's C*H*W)."""
        return int(math.prod(self.train_x.shape[1:]))

    @property
    def input_shape(self) -> tuple:
        return tuple(self.train_x.shape[1:])

    @property
    def kind(self) -> str:
        """``"vector"``, ``"image"``, ``"tokens"`` (or ``"other"``): what a model must take."""
        if not self.train_x.is_floating_point():
            return "tokens"
        return {2: "vector", 4: "image"}.get(self.train_x.dim(), "other")

    def describe(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape)
        what = {"vector": f"{self.num_features}-feature vectors",
                "image": f"{shape} images",
                "tokens": f"token-id sequences (vocabulary {self.vocab_size})"}
        return what.get(self.kind, f"inputs of shape {shape}")


# --------------------------------------------------------------------------- synthetic


def synthetic(seed: int, *, train: int = SYNTHETIC_EXAMPLES, test: int = 2048,
              features: int | tuple = SYNTHETIC_FEATURES, classes: int = SYNTHETIC_CLASSES,
              teacher_hidden: int = 64) -> Dataset:
    """The generated task; ``features`` may be a shape ``(C, H, W)`` for image inputs."""
    shape = (features,) if isinstance(features, int) else tuple(features)
    n = int(math.prod(shape))
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(n, teacher_hidden, generator=gen) / n ** 0.5
    w2 = torch.randn(teacher_hidden, classes, generator=gen) / teacher_hidden ** 0.5
    x = torch.randn(train + test, n, generator=gen)
    logits = torch.tanh(x @ w1) @ w2 * 3.0
    y = logits.argmax(1)
    if len(shape) > 1:
        x = x.reshape(train + test, *shape)
    return Dataset(x[:train], y[:train], x[train:], y[train:], classes, name="synthetic")


# --------------------------------------------------------------------------- loading


def load(config) -> Dataset:
    """The dataset ``config`` names (``dataset``, ``data_path``, ``examples``, ...), with its
    validation set held out (``validation_fraction``)."""
    data = _load(config)
    if config.validation_fraction:
        hold_out_validation(data, config.validation_fraction)
    return data


def _load(config) -> Dataset:
    name = config.dataset
    if name == "synthetic":
        train = config.examples or SYNTHETIC_EXAMPLES
        return synthetic(config.seed, train=train, test=max(train // 8, 1),
                         features=parse_features(config.features),
                         classes=config.classes or SYNTHETIC_CLASSES)
    readers = {"mnist": mnist, "cifar10": cifar10, "cifar100": cifar100, "ag-news": ag_news}
    if name not in readers and name != "digits":
        raise ConfigError(f"unknown dataset {name!r}; choose one of: synthetic, digits, "
                          + ", ".join(readers))
    if not config.data_path and name != "digits":
        raise ConfigError(f"dataset {name} is read from files you already have: pass their "
                          f"directory with --data-path DIR (expected there: "
                          f"{EXPECTED[name]}; nothing is downloaded)")
    kwargs = {"vocab_size": config.vocab_size or VOCAB_SIZE} if name == "ag-news" else {}
    data = digits() if name == "digits" else readers[name](config.data_path, **kwargs)
    if config.examples:
        available = len(data.train_y)
        if config.examples > available:
            raise ConfigError(f"examples {config.examples} is more than the {available} "
                              f"training examples of {name}"
                              + (f" in {config.data_path}" if config.data_path else ""))
        data.train_x = data.train_x[:config.examples].clone()
        data.train_y = data.train_y[:config.examples].clone()
    return data


def hold_out_validation(data: Dataset, fraction: float) -> None:
    """Move ``round(fraction * N)`` training examples, drawn with :data:`VALIDATION_SEED`,
    into ``data.val_x`` / ``data.val_y``; the rest stay the training set, in their order."""
    n = len(data.train_y)
    held = round(fraction * n)
    if held < 1 or held >= n:
        raise ConfigError(f"validation-fraction {fraction} of the {n} training examples of "
                          f"{data.name} holds out {held}; it must leave at least one example "
                          "on each side")
    chosen = np.random.default_rng(VALIDATION_SEED).permutation(n)[:held]
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    keep = torch.from_numpy(~mask)
    held_out = torch.from_numpy(mask)
    data.val_x, data.val_y = data.train_x[held_out].clone(), data.train_y[held_out].clone()
    data.train_x, data.train_y = data.train_x[keep].clone(), data.train_y[keep].clone()


#: What each reader looks for, for error messages.
EXPECTED = {
    "mnist": "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
             "t10k-labels-idx1-ubyte (or the same names with .gz)",
    "cifar10": "cifar-10-batches-py/ with data_batch_1 .. data_batch_5 and test_batch",
    "cifar100": "cifar-100-python/ with train and test",
    "ag-news": "train.csv and test.csv (class index, title, description)",
}


def _directory(name: str, path) -> Path:
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"dataset {name}: data path {str(root)!r} does not exist (expected "
                          f"there: {EXPECTED[name]})")
    if not root.is_dir():
        raise ConfigError(f"dataset {name}: data path {str(root)!r} is not a directory "
                          f"(expected a directory with {EXPECTED[name]})")
    return root


def _find(name: str, root: Path, subdirs: tuple, filename: str, gz: bool = False) -> Path:
    """``filename`` (or ``filename.gz`` if ``gz``) in the first of ``subdirs`` of ``root``
    that has it."""
    places = [root / sub if sub else root for sub in subdirs]
    for place in places:
        for candidate in (filename, filename + ".gz") if gz else (filename,):
            if (place / candidate).is_file():
                return place / candidate
    where = " or ".join(repr(str(p)) for p in places)
    also = f" (or {filename}.gz)" if gz else ""
    raise ConfigError(f"dataset {name}: expected the file {filename}{also} in {where}; not "
                      f"found. Put the {name} files there (nothing is downloaded)")


def _read_bytes(path: Path) -> bytes:
    """A whole (uncompressed) file, refused without reading it if it could not fit in the
    memory available (a CIFAR batch is 30 MB; a wrong path may name a huge file)."""
    try:
        size = path.stat().st_size
        usable = footprint.USABLE * footprint.available_bytes()
        if size > usable:
            raise ConfigError(f"{path}: {size / footprint.GB:,.1f} GB, more than the "
                              f"{usable / footprint.GB:,.1f} GB of memory usable; is this the "
                              "right file?")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None


# --------------------------------------------------------------------------- images


def _normalise(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``N x C x H x W`` -> float32, (x - mean_c) / std_c with the training set's
    per-channel mean and standard deviation, computed exactly from byte histograms."""
    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(train.shape[1]):
        counts = np.bincount(train[:, c].ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        m = (counts * values).sum() / n
        var = (counts * (values - m) ** 2).sum() / n
        mean.append(m)
        std.append(math.sqrt(var) if var > 0 else 1.0)
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    out = []
    for array in (train, test):
        x = torch.from_numpy(array.astype(np.float32))
        out.append(x.sub_(mean_t).div_(std_t))
    return out[0], out[1]


def read_idx(path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (MNIST's format), plain or
    ``.gz``.

    Read as a stream: the magic number and the dimensions first, then exactly the bytes they
    announce, and one more to detect trailing data.  A ``.gz`` file is inflated only that far,
    so a small file that would inflate to gigabytes (a corrupt or hostile one) is refused
    after inflating at most what its header promised, and a header promising more than the
    memory available (``footprint.available_bytes``) is refused before inflating any data."""
    path = Path(path)
    try:
        opened = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
        with opened as fh:
            return _read_idx_stream(fh, path, ndim)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path}: cannot be read: {exc}") from None


def _read_exactly(fh, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = fh.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_idx_stream(fh, path: Path, ndim: int) -> np.ndarray:
    expected_magic = 0x0800 | ndim
    head = _read_exactly(fh, 4)
    if len(head) < 4:
        raise ConfigError(f"{path}: truncated IDX file ({len(head)} bytes, not even the magic "
                          "number)")
    magic = struct.unpack(">I", head)[0]
    if magic != expected_magic:
        raise ConfigError(f"{path}: bad IDX magic number 0x{magic:08x}, expected "
                          f"0x{expected_magic:08x} (unsigned bytes, {ndim} dimension"
                          f"{'s' if ndim > 1 else ''}); is this the right file?")
    header = 4 + 4 * ndim
    raw_dims = _read_exactly(fh, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ConfigError(f"{path}: truncated IDX header ({4 + len(raw_dims)} bytes, "
                          f"expected {header})")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    size = int(math.prod(dims))
    available = footprint.available_bytes()
    if size > footprint.USABLE * available:
        raise ConfigError(f"{path}: its header announces {'x'.join(map(str, dims))} bytes "
                          f"({size / footprint.GB:,.1f} GB), more than the "
                          f"{footprint.USABLE * available / footprint.GB:,.1f} GB of memory "
                          "usable; is this the right file?")
    data = _read_exactly(fh, size)
    if len(data) < size:
        raise ConfigError(f"{path}: {header + len(data)} bytes, but its header announces "
                          f"{'x'.join(map(str, dims))} bytes of data ({header + size} in all): "
                          "truncated")
    if fh.read(1):
        raise ConfigError(f"{path}: more than the {header + size} bytes its header announces "
                          f"({'x'.join(map(str, dims))} bytes of data): trailing bytes "
                          "(not read further)")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def mnist(path) -> Dataset:
    """MNIST from its four IDX files (also ``.gz``) in ``path`` or ``path/MNIST/raw``."""
    root = _directory("mnist", path)
    subdirs = ("", "MNIST/raw")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path = _find("mnist", root, subdirs, f"{prefix}-images-idx3-ubyte", gz=True)
        labels_path = _find("mnist", root, subdirs, f"{prefix}-labels-idx1-ubyte", gz=True)
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise ConfigError(f"{labels_path}: {len(labels)} labels for the {len(images)} "
                              f"images of {images_path}")
        if len(labels) == 0:
            raise ConfigError(f"{images_path}: no images")
        if labels.max() >= 10:
            raise ConfigError(f"{labels_path}: label {int(labels.max())} outside 0..9")
        arrays[split] = (images, labels, images_path)
    (train, train_y, train_path), (test, test_y, test_path) = arrays["train"], arrays["test"]
    if train.shape[1:] != test.shape[1:]:
        raise ConfigError(f"{test_path}: images of {test.shape[1]}x{test.shape[2]}, but "
                          f"{train_path} has {train.shape[1]}x{train.shape[2]}")
    x, tx = _normalise(train[:, None], test[:, None])
    return Dataset(x, torch.from_numpy(train_y.astype(np.int64)), tx,
                   torch.from_numpy(test_y.astype(np.int64)), 10, name="mnist")


def digits_split(labels: np.ndarray) -> np.ndarray:
    """The test mask of the digits split: in each class, ``round(DIGITS_TEST_SHARE * n_c)``
    of its examples drawn with :data:`DIGITS_SPLIT_SEED` (the same for every run)."""
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test[rng.permutation(members)[:round(DIGITS_TEST_SHARE * len(members))]] = True
    return test


def digits() -> Dataset:
    """scikit-learn's handwritten digits as ``1 x 8 x 8`` images (values 0..16), split by
    :func:`digits_split`, the training set in the bundled order."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(DIGITS_MISSING) from None
    bunch = load_digits()
    images = np.asarray(bunch.images).round().astype(np.uint8)[:, None]  # N x 1 x 8 x 8
    labels = np.asarray(bunch.target, dtype=np.int64)
    test = digits_split(labels)
    x, tx = _normalise(images[~test], images[test])
    return Dataset(x, torch.from_numpy(labels[~test]), tx, torch.from_numpy(labels[test]), 10,
                   name="digits")


class _ArrayUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch holds: dicts, lists, numbers, bytes and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3's protocol-2 pickles spell bytes

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch holds "
                                     "only numpy arrays and lists)")


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 -- any unpickling failure: a corrupt file
        raise ConfigError(f"{path}: not a readable CIFAR python batch "
                          f"({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise ConfigError(f"{path}: expected a pickled dict with b'data' and "
                          f"b'{label_key}', got {type(batch).__name__}")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise ConfigError(f"{path}: no b'{key}' entry (keys: "
                              f"{', '.join(map(str, batch))})")
    data, labels = batch["data"], batch[label_key]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise ConfigError(f"{path}: b'data' must be a uint8 array of N x 3072 (3 x 32 x 32 "
                          f"images), got {dtype} of shape {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: b'{label_key}' is not a list of integers ({exc})") from None
    if len(labels) != len(data):
        raise ConfigError(f"{path}: {len(labels)} labels in b'{label_key}' for "
                          f"{len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"{path}: labels must be in 0..{num_classes - 1}, found "
                          f"{int(labels.min())}..{int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(name: str, path, subdir: str, train_files: list, test_file: str, label_key: str,
           num_classes: int) -> Dataset:
    root = _directory(name, path)
    subdirs = (subdir, "")
    parts = [_cifar_batch(_find(name, root, subdirs, f), label_key, num_classes)
             for f in train_files]
    train = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test, test_y = _cifar_batch(_find(name, root, subdirs, test_file), label_key, num_classes)
    if len(train) == 0:
        raise ConfigError(f"dataset {name} in {root}: the training batches hold no images")
    x, tx = _normalise(train, test)
    return Dataset(x, torch.from_numpy(train_y), tx, torch.from_numpy(test_y), num_classes,
                   name=name)


def cifar10(path) -> Dataset:
    """CIFAR-10 from the python batches in ``path/cifar-10-batches-py`` or ``path``."""
    return _cifar("cifar10", path, "cifar-10-batches-py",
                  [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10)


def cifar100(path) -> Dataset:
    """CIFAR-100 (fine labels) from ``path/cifar-100-python`` or ``path``."""
    return _cifar("cifar100", path, "cifar-100-python", ["train"], "test", "fine_labels", 100)


# --------------------------------------------------------------------------- text

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase, then the runs of ASCII letters and digits (everything else separates)."""
    return _TOKEN.findall(text.lower())


def _read_text_csv(path: Path) -> tuple[list[int], list[list[str]]]:
    labels, docs = [], []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.reader(fh), 1):
                if not row:
                    continue
                if len(row) < 2 or not row[0].strip().isdigit() or int(row[0]) < 1:
                    raise ConfigError(f"{path}, line {line}: expected a class index >= 1 "
                                      f"then the text (title, description), got {row[:3]!r}")
                labels.append(int(row[0]) - 1)
                docs.append(tokenize(" ".join(row[1:])))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot be read as a UTF-8 CSV file: {exc}") from None
    if not labels:
        raise ConfigError(f"{path}: no rows")
    return labels, docs


def build_vocabulary(docs, size: int) -> dict:
    """Token -> id: the ``size - 2`` most frequent tokens of ``docs`` (ties by the token's
    text) get ids 2, 3, ...; 0 is padding, 1 any other token."""
    counts = Counter(token for doc in docs for token in doc)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max(size - 2, 0)]
    return {token: i + 2 for i, (token, _) in enumerate(ranked)}


def _encode(docs, vocab: dict, max_tokens: int) -> torch.Tensor:
    width = max(1, min(max_tokens, max(len(d) for d in docs)))
    ids = np.zeros((len(docs), width), dtype=np.int64)
    for i, doc in enumerate(docs):
        row = [vocab.get(t, UNKNOWN) for t in doc[:width]]
        ids[i, :len(row)] = row
    return torch.from_numpy(ids)


def ag_news(path, vocab_size: int = VOCAB_SIZE, max_tokens: int = MAX_TOKENS) -> Dataset:
    """AG-News-style CSVs: ``train.csv`` and ``test.csv`` in ``path`` (or ``ag_news_csv``).

    Each row: class index 1..C, then text fields (title, description), joined with a space
    and tokenized by :func:`tokenize`; the first ``max_tokens`` tokens are kept. The
    vocabulary (:func:`build_vocabulary`) comes from the training set only.
    """
    root = _directory("ag-news", path)
    subdirs = ("", "ag_news_csv")
    train_path = _find("ag-news", root, subdirs, "train.csv")
    test_path = _find("ag-news", root, subdirs, "test.csv")
    train_y, train_docs = _read_text_csv(train_path)
    test_y, test_docs = _read_text_csv(test_path)
    classes = max(train_y) + 1
    if max(test_y) >= classes:
        raise ConfigError(f"{test_path}: class index {max(test_y) + 1} does not occur in "
                          f"{train_path} (classes 1..{classes})")
    vocab = build_vocabulary(train_docs, vocab_size)
    return Dataset(_encode(train_docs, vocab, max_tokens), torch.tensor(train_y),
                   _encode(test_docs, vocab, max_tokens), torch.tensor(test_y), classes,
                   name="ag-news", vocab_size=len(vocab) + 2)
