"""What is trained: models, datasets and how the data is dealt to workers.

* :mod:`hpcgrad.workloads.catalog` -- the names (``--model``, ``--dataset``, ``--partition``)
  and which model takes which data; no torch, so settings are checked before heavy imports;
* :mod:`hpcgrad.workloads.models` -- ``mlp``, ``cnn``, ``resnet20/56``, ``embedding-bag``;
* :mod:`hpcgrad.workloads.datasets` -- ``Dataset``, ``synthetic`` (the embedded task) and
  the file readers;
* :mod:`hpcgrad.workloads.footprint` -- the memory the settings imply, checked against what
  is available before anything is allocated (no torch);
* :mod:`hpcgrad.workloads.partitions` -- ``ShardSampler`` (``iid``, ``classes:L``,
  ``dirichlet:alpha``).

``Dataset``, ``synthetic``, ``mlp`` and ``ShardSampler`` stay importable from here (older code
and scripts); they are loaded, with torch, on first access.
"""

_EXPORTS = {"Dataset": "datasets", "synthetic": "datasets", "mlp": "models",
            "ShardSampler": "partitions"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
