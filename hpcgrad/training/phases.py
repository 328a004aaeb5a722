"""The phases of one training step, in order: the exchange times each, the log stores each
step's seconds per phase and rank (``/steps/time_<phase>``, docs/log-format.md).

A module of its own so that the exchange (the hot path) and the log (h5py) both name them
without importing each other.
"""

#: ``average``: error averaging among the workers (ef-sgd --error-averaging), else 0.
PHASES = ("compute", "encode", "gather", "aggregate", "bcast", "decode", "update", "average")
