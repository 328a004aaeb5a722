"""The memory a run's settings imply, checked before anything is allocated: no torch, no MPI,
so settings can be refused in a fraction of a second on every rank.

``--hidden 10000000`` or ``--examples 10**12`` would otherwise end in an allocation traceback
on every rank, or in the kernel killing one.  :func:`check` estimates the arrays the settings
imply (:func:`estimate`: the dataset every rank holds, the parameters with their gradients,
algorithm state and message buffers, one batch's activations and the whole test set's in an
evaluation, the log buffers of ``--flush-every`` steps, DQ-SGD's ``--dq-window``) for the
ranks on this node, and refuses (:class:`ConfigError`, one line, the figure in GB) when that
exceeds :data:`USABLE` of the memory available (:func:`available_bytes`).  The estimate
counts only the large arrays, a lower bound of a run's need; the other part of the memory is
the margin left for Python, torch, MPI and the page cache.

The same bound serves the dataset readers (``datasets.read_idx``): a compressed file is
inflated only up to the size its header promises, and only if that fits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import ConfigError
from .catalog import parse_features

#: Part of the available memory the estimated arrays may take; the rest is the margin.
USABLE = 0.8
GB = 1e9

#: Bytes per parameter on a worker: parameters, gradient, momentum, residual, scratch, saved
#: copy, uplink and downlink buffers (float32 each).
WORKER_BYTES_PER_PARAM = 4 * 12
#: Bytes per parameter on the server: its replica and aggregation arrays, plus per worker one
#: uplink slot and positions (an fp32 value and an int64 position, at most, per parameter).
SERVER_BYTES_PER_PARAM = 4 * 8
SERVER_BYTES_PER_PARAM_PER_WORKER = 4 + 8 + 4
#: float64 columns each rank keeps per step between flushes (loss and 8 phase times), and
#: rank 0 per rank and step (gathered) plus per worker (bytes, extra columns).
FLUSH_COLUMNS = 1 + 8
#: The synthetic task's teacher width (``datasets.synthetic``).
TEACHER_HIDDEN = 64
#: ResNet parameters besides the classifier (resnet20 and resnet56 on 3-channel inputs).
RESNET_BODY = {"resnet20": 270_000, "resnet56": 853_000}
#: Input shape and classes of the file datasets and of the bundled digits (ag-news: the
#: vocabulary decides).
FILE_DATASETS = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10),
                 "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100),
                 "ag-news": ((128,), 4)}
VOCAB_SIZE = 20000  # datasets.VOCAB_SIZE, without importing torch


def available_bytes() -> int:
    """Memory this process may still take: ``MemAvailable`` of ``/proc/meminfo`` (else free
    pages from ``sysconf``), lowered to what the cgroup (a container's or a Slurm job's
    ``memory.max``) leaves."""
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 2**63  # unknown: nothing is refused
    for limit, used in (("memory.max", "memory.current"),  # cgroup v2
                        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            if cap != "max" and int(cap) < 2**60:
                left = int(cap) - int(Path("/sys/fs/cgroup", used).read_text())
                available = min(available, max(left, 0))
            break
        except (OSError, ValueError):
            continue
    return available


def ranks_on_this_node() -> int:
    """How many ranks of the job share this node's memory, from the launcher's environment
    (MPICH's Hydra, Open MPI, Slurm); 1 if none says."""
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def _shape_and_classes(cfg) -> tuple[tuple, int, int]:
    """Input shape, classes and training examples (0 where the files decide)."""
    if cfg.dataset == "synthetic":
        return (parse_features(cfg.features), cfg.classes or 10, cfg.examples or 16384)
    shape, classes = FILE_DATASETS.get(cfg.dataset, ((1,), 10))
    return shape, classes, 0


def parameters(cfg) -> int:
    """The model's parameter count, from the settings alone (``workloads.models``)."""
    shape, classes, _ = _shape_and_classes(cfg)
    n, hidden = math.prod(shape), cfg.hidden
    if cfg.model == "embedding-bag":
        return (cfg.vocab_size or VOCAB_SIZE) * hidden + hidden * classes + classes
    if cfg.model == "cnn":
        h, w = (max(((s - 4) // 2 - 4) // 2, 1) for s in shape[-2:]) if len(shape) == 3 \
            else (1, 1)
        return (shape[0] * 25 * 32 + 32 + 32 * 25 * 64 + 64 + 64 * h * w * 512 + 512
                + 512 * classes + classes)
    if cfg.model in RESNET_BODY:
        return RESNET_BODY[cfg.model] + 64 * classes + classes
    return n * hidden + hidden + hidden * hidden + hidden + hidden * classes + classes


def estimate(cfg, world_size: int) -> dict:
    """Bytes of the large arrays one rank holds, by part: ``dataset``, ``model``
    (parameters, gradients, algorithm state, message buffers: the server's, the larger),
    ``activations``, ``log buffers``, ``dq window``."""
    shape, classes, examples = _shape_and_classes(cfg)
    n = math.prod(shape)
    workers = max(world_size - 1, 1)
    d = parameters(cfg)
    parts = {}
    if examples:  # the synthetic task, generated on every rank (datasets.synthetic)
        total = examples + max(examples // 8, 1)
        parts["dataset"] = (4 * total * n + 4 * total * (2 * TEACHER_HIDDEN + 2 * classes)
                            + 8 * total + 4 * TEACHER_HIDDEN * (n + classes))
    parts["model"] = max(WORKER_BYTES_PER_PARAM * d,
                         (SERVER_BYTES_PER_PARAM + SERVER_BYTES_PER_PARAM_PER_WORKER * workers)
                         * d)
    width = n + 2 * cfg.hidden + classes  # an mlp's layers; a bound for the others' inputs
    test = max(examples // 8, 1) if examples else 0
    parts["activations"] = 4 * width * (3 * cfg.batch_size + test)
    parts["log buffers"] = 8 * cfg.flush_every * (FLUSH_COLUMNS * (world_size + 1)
                                                  + workers * 4)
    if cfg.algorithm == "dq-sgd" and getattr(cfg, "dq_window", None):
        parts["dq window"] = 8 * cfg.dq_window
    return parts


#: The options behind each part, named in the message.
DRIVERS = {"dataset": ("examples", "features", "classes"),
           "model": ("hidden", "features", "classes", "vocab_size"),
           "activations": ("batch_size", "hidden", "features", "examples"),
           "log buffers": ("flush_every",),
           "dq window": ("dq_window",)}


def check(cfg, world_size: int, available: int | None = None, ranks: int | None = None):
    """Refuse settings whose arrays, on the ranks of this node, exceed :data:`USABLE` of the
    available memory: :class:`ConfigError`, one line, the figures in GB.  Returns ``cfg``."""
    parts = estimate(cfg, world_size)
    ranks = ranks or min(ranks_on_this_node(), world_size)
    need = sum(parts.values()) * ranks
    available = available_bytes() if available is None else available
    if need <= USABLE * available:
        return cfg
    part = max(parts, key=parts.get)
    given = [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in DRIVERS[part]
             if getattr(cfg, name, None) is not None]
    on = f"{ranks} ranks on this node" if ranks > 1 else "this rank"
    raise ConfigError(
        f"these settings need about {need / GB:,.1f} GB of memory for {on} (the largest "
        f"part, {part}: {parts[part] / GB:,.1f} GB per rank, from {', '.join(given)}), more "
        f"than the {USABLE * available / GB:,.1f} GB usable ({USABLE:.0%} of the "
        f"{available / GB:,.1f} GB available); reduce "
        + " or ".join(f"--{name.replace('_', '-')}" for name in DRIVERS[part]
                      if getattr(cfg, name, None) is not None))
