"""What workloads exist, and which model takes which data: no torch, so settings can be
checked (and ``--help`` printed) before any heavy import.

The workload settings (``--model``, ``--dataset``, ``--partition``, ...) are declared here
(:data:`WORKLOAD`, :mod:`hpcgrad.options`), with the rules between them
(:func:`check_workload`).

:mod:`hpcgrad.workloads.models` builds the models named here, :mod:`hpcgrad.workloads.datasets`
loads the datasets, :mod:`hpcgrad.workloads.partitions` deals them to workers.
"""

from __future__ import annotations

import importlib.util
import math

from ..options import Option, Section, fail


def partition_classes(partition: str) -> int | None:
    """``None`` for ``iid`` and ``dirichlet:alpha``; L for ``classes:L`` (L >= 1; the sampler
    checks L <= classes)."""
    kind, value = parse_partition(partition)
    return value if kind == "classes" else None


def parse_partition(partition: str) -> tuple:
    """``("iid", None)``, ``("classes", L)`` or ``("dirichlet", alpha)`` (hpcgrad/workloads/partitions.py)."""
    if partition == "iid":
        return "iid", None
    head, _, tail = partition.partition(":")
    if head == "dirichlet":
        try:
            alpha = float(tail)
        except ValueError:
            alpha = math.nan
        fail(math.isfinite(alpha) and alpha > 0, "partition dirichlet:alpha needs a number "
             f"alpha > 0 (e.g. dirichlet:0.5; smaller = more skewed), got {partition!r}")
        return "dirichlet", alpha
    fail(head == "classes" and tail.isdigit() and int(tail) >= 1,
         f"partition must be 'iid', 'classes:L' with L an integer >= 1 (each worker sees "
         f"L classes) or 'dirichlet:alpha' with alpha > 0, got {partition!r}")
    return "classes", int(tail)


#: --model, --dataset and --batch-norm choices (hpcgrad/workloads/models.py, hpcgrad/workloads/datasets.py).
MODELS = ("mlp", "cnn", "resnet20", "resnet56", "embedding-bag")
DATASETS = ("synthetic", "digits", "mnist", "cifar10", "cifar100", "ag-news")
#: The datasets read from --data-path (synthetic is generated, digits ships with scikit-learn).
FILE_DATASETS = ("mnist", "cifar10", "cifar100", "ag-news")
#: Why --dataset digits cannot run, when scikit-learn is missing.
DIGITS_MISSING = ("dataset digits is scikit-learn's bundled copy of the UCI handwritten digits, "
                  "and scikit-learn is not installed: pip install 'hpcgrad[digits]' (or "
                  "pip install scikit-learn)")
BATCH_NORMS = ("batch-stats", "running", "none")
#: The inputs each model takes and each file dataset gives (synthetic: by --features).
MODEL_INPUTS = {"mlp": ("vector", "image"), "cnn": ("image",), "resnet20": ("image",),
                "resnet56": ("image",), "embedding-bag": ("tokens",)}
MODEL_NEEDS = {("vector", "image"): "feature vectors or images",
               ("image",): "images (C x H x W: --dataset mnist, cifar10, cifar100, or "
                           "synthetic with --features CxHxW, e.g. 1x28x28)",
               ("tokens",): "token ids (--dataset ag-news)"}
_DATASET_INPUTS = {"digits": ("image", "1x8x8 images"),
                   "mnist": ("image", "1x28x28 images"), "cifar10": ("image", "3x32x32 images"),
                   "cifar100": ("image", "3x32x32 images"),
                   "ag-news": ("tokens", "token-id sequences")}


def parse_features(features) -> tuple:
    """``--features``: ``None`` -> ``(32,)``; ``64`` -> ``(64,)``; ``"3x32x32"`` -> ``(3, 32, 32)``
    (image-shaped synthetic inputs)."""
    if features is None:
        return (32,)
    dims: tuple = ()
    if isinstance(features, int) and not isinstance(features, bool):
        dims = (features,)
    elif isinstance(features, str) and all(v.isdigit() for v in features.split("x")):
        dims = tuple(int(v) for v in features.split("x"))
    fail(len(dims) in (1, 3) and min(dims) >= 1, "features must be an integer >= 1 or an "
         f"image shape CxHxW (e.g. 1x28x28), got {features!r}")
    return dims


def check_workload(cfg) -> None:
    """The rules between the workload settings of a training config, each of which has
    passed its own checks (:data:`WORKLOAD`)."""
    shape = parse_features(cfg.features)
    synthetic = cfg.dataset == "synthetic"
    from_files = cfg.dataset in FILE_DATASETS
    fail(synthetic or (cfg.features is None and cfg.classes is None),
         f"features and classes shape the generated data of --dataset synthetic; dataset "
         f"{cfg.dataset} has its own")
    fail(not synthetic or cfg.data_path is None, "data-path: --dataset synthetic is "
         f"generated and reads no files; choose the files' format with --dataset "
         f"({', '.join(FILE_DATASETS)})")
    fail(from_files or cfg.data_path is None, f"data-path: --dataset {cfg.dataset} reads no "
         f"files; choose the files' format with --dataset ({', '.join(FILE_DATASETS)})")
    fail(not from_files or bool(cfg.data_path), f"dataset {cfg.dataset} is read from files "
         "you already have: pass their directory with --data-path DIR (nothing is "
         "downloaded)")
    if cfg.dataset == "digits":
        fail(have_scikit_learn(), DIGITS_MISSING)
        fail(cfg.model != "cnn", "model cnn needs images of at least 16x16 (two 5x5 "
             "convolutions and two 2x2 poolings); dataset digits has 1x8x8 images: use "
             "--model mlp or resnet20")
    fail(cfg.vocab_size is None or cfg.dataset == "ag-news",
         "vocab-size is the vocabulary cap of --dataset ag-news")
    if cfg.batch_norm is not None:
        fail(cfg.model in ("resnet20", "resnet56"),
             f"batch-norm: only resnet20 and resnet56 have batch norm, not {cfg.model}")
    kind, described = _DATASET_INPUTS.get(cfg.dataset, (
        ("image", "x".join(map(str, shape)) + " images") if len(shape) == 3
        else ("vector", f"{shape[0]}-feature vectors")))
    needs = MODEL_INPUTS[cfg.model]
    fail(kind in needs, f"model {cfg.model} needs {MODEL_NEEDS[needs]}, but dataset "
         f"{cfg.dataset} has {described}")


def have_scikit_learn() -> bool:
    """Whether scikit-learn can be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec("sklearn") is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules["sklearn"] = None
        return False


def _features_argument(text: str):
    """``--features 64`` is a number, ``--features 1x28x28`` an image shape."""
    return int(text) if text.isdigit() else text


WORKLOAD = Section("workload (models, datasets, partitions)", (
    Option("model", str, "mlp", choices=MODELS,
           help="mlp = two hidden layers of --hidden units; cnn = the S3GD-MV authors' MNIST "
                "CNN (2 conv + 2 fc, 582,026 parameters on MNIST); resnet20 / resnet56 = CIFAR "
                "ResNets (He et al. 2016, option-A shortcuts); embedding-bag = mean of token "
                "embeddings + linear, for text"),
    Option("dataset", str, "synthetic", choices=DATASETS,
           help="synthetic = generated from the seed (the embedded task); digits = "
                "scikit-learn's 1,797 8x8 handwritten digits (the digits extra; a fixed "
                "stratified split, 1,438 train / 359 test); mnist (IDX files, "
                ".gz too), cifar10 / cifar100 (python pickle batches), ag-news (train.csv, "
                "test.csv) = your files in --data-path"),
    Option("data_path", str, None, metavar="DIR",
           help="directory of the dataset's files: mnist: train-images-idx3-ubyte etc. (or "
                "DIR/MNIST/raw); cifar10: DIR/cifar-10-batches-py or DIR; cifar100: "
                "DIR/cifar-100-python or DIR; ag-news: DIR or DIR/ag_news_csv"),
    Option("partition", str, "iid", metavar="iid|classes:L|dirichlet:ALPHA",
           check=lambda value, label: parse_partition(value),
           help="how the training set is dealt to workers: iid; classes:L = each worker sees "
                "only L classes, chosen from the seed and its rank; dirichlet:ALPHA = each "
                "class split among the workers in Dir(ALPHA) shares (small ALPHA = skewed)"),
    Option("batch_norm", str, None, choices=BATCH_NORMS, default_help="batch-stats",
           help="resnet: batch-stats = normalise with each batch's statistics, no running "
                "buffers (replicas stay identical); running = PyTorch's running statistics, "
                "per replica, not synchronised; none = no normalisation"),
    Option("examples", int, None, bounds=">= 1", metavar="N",
           help="training examples: synthetic generates N (and N/8 held out; default 16384); "
                "file datasets and digits use their first N (default: all)"),
    Option("validation_fraction", float, 0.0, bounds="[0, 1)", metavar="F",
           help="hold out this share of the training examples (after --examples; a fixed "
                "draw, the same for every --seed) as a validation set, evaluated beside the "
                "test set and logged apart (/validation): choose hyperparameters on it, never "
                "on the test set; 0 = none"),
    Option("features", (int, str), None, metavar="F|CxHxW", parse=_features_argument,
           check=lambda value, label: parse_features(value), default_help="32",
           help="synthetic: inputs per example, or an image shape such as 1x28x28 for cnn / "
                "resnet"),
    Option("classes", int, None, bounds=">= 2", metavar="C", default_help="10",
           help="synthetic: number of classes"),
    Option("vocab_size", int, None, bounds=">= 3", metavar="V", default_help="20000",
           help="ag-news: embedding rows: padding, unknown and the V-2 most frequent training "
                "tokens"),
    Option("hidden", int, 128, bounds=">= 1", metavar="H",
           help="mlp: hidden width; embedding-bag: embedding dimension"),
), description="nothing is downloaded: file datasets are read from --data-path",
    check=check_workload)
