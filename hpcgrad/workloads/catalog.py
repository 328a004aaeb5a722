"""What workloads exist, and which model takes which data: no torch, so settings can be
checked (and ``--help`` printed) before any heavy import.

:mod:`hpcgrad.workloads.models` builds the models named here, :mod:`hpcgrad.workloads.datasets`
loads the datasets, :mod:`hpcgrad.workloads.partitions` deals them to workers.
"""

from __future__ import annotations

import math

from ..errors import ConfigError


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _integer(name: str, value, minimum: int) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
           f"{name} must be an integer >= {minimum}, got {value!r}")


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
        _check(math.isfinite(alpha) and alpha > 0, "partition dirichlet:alpha needs a number "
               f"alpha > 0 (e.g. dirichlet:0.5; smaller = more skewed), got {partition!r}")
        return "dirichlet", alpha
    _check(head == "classes" and tail.isdigit() and int(tail) >= 1,
           f"partition must be 'iid', 'classes:L' with L an integer >= 1 (each worker sees "
           f"L classes) or 'dirichlet:alpha' with alpha > 0, got {partition!r}")
    return "classes", int(tail)


#: --model, --dataset and --batch-norm choices (hpcgrad/workloads/models.py, hpcgrad/workloads/datasets.py).
MODELS = ("mlp", "cnn", "resnet20", "resnet56", "embedding-bag")
DATASETS = ("synthetic", "mnist", "cifar10", "cifar100", "ag-news")
BATCH_NORMS = ("batch-stats", "running", "none")
#: The inputs each model takes and each file dataset gives (synthetic: by --features).
MODEL_INPUTS = {"mlp": ("vector", "image"), "cnn": ("image",), "resnet20": ("image",),
                "resnet56": ("image",), "embedding-bag": ("tokens",)}
MODEL_NEEDS = {("vector", "image"): "feature vectors or images",
               ("image",): "images (C x H x W: --dataset mnist, cifar10, cifar100, or "
                           "synthetic with --features CxHxW, e.g. 1x28x28)",
               ("tokens",): "token ids (--dataset ag-news)"}
_DATASET_INPUTS = {"mnist": ("image", "1x28x28 images"), "cifar10": ("image", "3x32x32 images"),
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
    _check(len(dims) in (1, 3) and min(dims) >= 1, "features must be an integer >= 1 or an "
           f"image shape CxHxW (e.g. 1x28x28), got {features!r}")
    return dims


def check_workload(cfg) -> None:
    """The workload settings of a training config (``--model``, ``--dataset``, ...)."""
    for name in ("model", "dataset", "data_path", "batch_norm"):
        value = getattr(cfg, name)
        _check(value is None or isinstance(value, str),
               f"{name.replace('_', '-')} must be a string, got {value!r}")
    _check(cfg.model in MODELS,
           f"unknown model {cfg.model!r}; choose one of: {', '.join(MODELS)}")
    _check(cfg.dataset in DATASETS,
           f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    for name, minimum in (("examples", 1), ("classes", 2), ("vocab_size", 3)):
        if getattr(cfg, name) is not None:
            _integer(name.replace("_", "-"), getattr(cfg, name), minimum)
    shape = parse_features(cfg.features)
    synthetic = cfg.dataset == "synthetic"
    _check(synthetic or (cfg.features is None and cfg.classes is None),
           f"features and classes shape the generated data of --dataset synthetic; dataset "
           f"{cfg.dataset} has its own")
    _check(not synthetic or cfg.data_path is None, "data-path: --dataset synthetic is "
           f"generated and reads no files; choose the files' format with --dataset "
           f"({', '.join(DATASETS[1:])})")
    _check(synthetic or bool(cfg.data_path), f"dataset {cfg.dataset} is read from files you "
           "already have: pass their directory with --data-path DIR (nothing is downloaded)")
    _check(cfg.vocab_size is None or cfg.dataset == "ag-news",
           "vocab-size is the vocabulary cap of --dataset ag-news")
    if cfg.batch_norm is not None:
        _check(cfg.batch_norm in BATCH_NORMS, f"unknown batch-norm {cfg.batch_norm!r}; "
               f"choose one of: {', '.join(BATCH_NORMS)}")
        _check(cfg.model in ("resnet20", "resnet56"),
               f"batch-norm: only resnet20 and resnet56 have batch norm, not {cfg.model}")
    kind, described = _DATASET_INPUTS.get(cfg.dataset, (
        ("image", "x".join(map(str, shape)) + " images") if len(shape) == 3
        else ("vector", f"{shape[0]}-feature vectors")))
    needs = MODEL_INPUTS[cfg.model]
    _check(kind in needs, f"model {cfg.model} needs {MODEL_NEEDS[needs]}, but dataset "
           f"{cfg.dataset} has {described}")
