"""hpcgrad: communication-efficient distributed training over MPI.

The package is layered; each subpackage imports only those below it (the contract is in
``pyproject.toml``, checked by ``lint-imports`` in the test suite; docs/architecture.md):

==============  ===============================================================
``cli``         ``hpcgrad train | analyze | bench``
``bench``,      benchmarks (MPI) and the offline log analysis (no MPI, no Numba);
``analysis``,   ``hpcgrad.torch``: your own training loop (``DistributedOptimizer``,
``torch``       ``serve``) around the training layer's exchange
``training``    the training loop, the exchange of one step, settings, HDF5 log,
                checkpoints, lr schedules, adversaries
``workloads``   models, datasets, partitions
``algorithms``  one module per algorithm: worker step, server step, update
``compression`` compressors C(v), top-K selection
``comm``        MPI: parameter-server transport, Allreduce, devices, agreed setup
``wire``        message header and codecs (body layouts)
``kernels``     the array kernels: Numba on CPU, NumPy/CuPy reference
==============  ===============================================================

``from hpcgrad import TrainConfig, train`` is the library API (loaded on first use, so
``import hpcgrad`` stays light).
"""

__version__ = "0.1.0"

_EXPORTS = {"TrainConfig": "hpcgrad.training.config", "train": "hpcgrad.training.runtime"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
