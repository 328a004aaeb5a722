"""``WorkerSampler``: ``DistributedSampler`` over the workers only (rank 0 trains nothing).

Worker w (rank w + 1) of M gets every M-th index of the epoch's order, starting at w.  With
``drop_last=True`` every worker gets the same number of examples, so with a ``DataLoader``
of ``drop_last=True`` every worker runs the same number of steps per epoch, as the exchange
requires (``control.py``).  Call ``set_epoch(e)`` each epoch, as with ``DistributedSampler``.
"""

from __future__ import annotations

from torch.utils.data import DistributedSampler


class WorkerSampler(DistributedSampler):
    def __init__(self, dataset, context=None, *, comm=None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True):
        if context is not None:
            comm = context.comm
        if comm is None:
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        if rank == 0:
            raise ValueError("WorkerSampler: rank 0 is the parameter server and reads no data")
        super().__init__(dataset, num_replicas=size - 1, rank=rank - 1, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
