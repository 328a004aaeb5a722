"""Where a rank computes: the host (NumPy) or a CUDA GPU (torch + CuPy).

With ``--device cuda`` the workers keep model, gradients and algorithm state
on their GPU and run the codec kernels there (CuPy arrays share torch's memory
through DLPack, no copies).  The server rank aggregates on the host and takes
no GPU.  Messages cross MPI from pinned host buffers: each worker copies its
encoded body device -> host before ``Gatherv`` (the copy synchronizes the
stream, so MPI never reads a buffer the GPU is still writing) and the
downlink host -> device after ``Bcast``.

Each GPU rank picks its device from its node-local rank (an
``MPI_COMM_TYPE_SHARED`` split), among the devices ``CUDA_VISIBLE_DEVICES``
leaves visible, so Slurm's per-task GPU binding and a user's own both work.

Whether the MPI library is CUDA-aware is detected and logged; hpcgrad 0.1
stages through host memory either way.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError


def node_local_rank(comm) -> int:
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        return local.Get_rank()
    finally:
        local.Free()


def cuda_aware_mpi() -> bool:
    """True when the MPI library says it can read and write GPU buffers."""
    query = getattr(MPI, "Query_cuda_support", None)
    if query is None:
        return False
    try:
        return bool(query())
    except (MPI.Exception, NotImplementedError):
        return False


class Host:
    """A rank that computes on the CPU: arrays are NumPy, nothing is staged."""

    name = "cpu"
    xp = np
    torch_device = "cpu"

    def array(self, tensor):
        return tensor.numpy()

    def empty_like_host(self, host):
        return host

    def to_host(self, array, host) -> None:
        if array is not host:
            np.copyto(host, array)

    def to_device(self, host, array) -> None:
        if array is not host:
            np.copyto(array, host)

    def synchronize(self) -> None:
        pass

    def describe(self) -> str:
        return "cpu"


class Cuda(Host):
    """A rank that computes on one GPU, chosen by its node-local rank."""

    name = "cuda"

    def __init__(self, local_rank: int):
        import torch
        try:
            import cupy
        except ImportError:
            raise ConfigError("--device cuda needs CuPy: pip install 'hpcgrad[gpu]'") from None
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("--device cuda: no CUDA GPU is visible to this rank "
                              "(check CUDA_VISIBLE_DEVICES and the driver)")
        self.index = local_rank % count
        torch.cuda.set_device(self.index)
        cupy.cuda.Device(self.index).use()
        self.xp = cupy
        self.torch_device = f"cuda:{self.index}"
        self._name = torch.cuda.get_device_name(self.index)

    def array(self, tensor):
        return self.xp.from_dlpack(tensor)

    def empty_like_host(self, host):
        return self.xp.zeros(host.shape, dtype=host.dtype)

    def to_host(self, array, host) -> None:
        array.get(out=host)  # synchronous on the current stream

    def to_device(self, host, array) -> None:
        array.set(host)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> str:
        return f"cuda:{self.index} ({self._name})"


def pinned_zeros(size: int, dtype=np.uint8) -> np.ndarray:
    """Zeroed page-locked host memory (faster device copies); plain memory without CuPy."""
    try:
        import cupyx
        array = cupyx.zeros_pinned(size, dtype=dtype)
    except Exception:  # noqa: BLE001 -- no CuPy or no driver: pageable memory works too
        return np.zeros(size, dtype=dtype)
    return array


def select(kind: str, local_rank: int, is_server: bool) -> Host:
    """The device of a rank; ``local_rank`` from :func:`node_local_rank` (a collective)."""
    if kind == "cpu" or is_server:
        return Host()
    if kind == "cuda":
        return Cuda(local_rank)
    raise ConfigError(f"unknown device {kind!r}; choose cpu or cuda")
