"""The embedded default task, kept importable from here (older code and scripts).

The pieces live in :mod:`hpcgrad.datasets` (``Dataset``, ``synthetic`` and the readers),
:mod:`hpcgrad.models` (``mlp`` and the other models) and :mod:`hpcgrad.partitions`
(``ShardSampler``: ``iid``, ``classes:L``, ``dirichlet:alpha``).
"""

from .datasets import Dataset, synthetic
from .models import mlp
from .partitions import ShardSampler

__all__ = ["Dataset", "ShardSampler", "mlp", "synthetic"]
