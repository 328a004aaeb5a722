"""hpcgrad: communication-efficient distributed training over MPI.

Layers (see docs/architecture.md): ``wire`` (message header), ``codecs``
(bodies), ``kernels`` (compiled CPU loops), ``algorithms`` (worker step,
server step, update), ``transport`` (MPI collectives), ``runtime`` (the
training loop), ``tracelog`` (HDF5 traffic log).
"""

__version__ = "0.1.0"
