"""How the training set is dealt to the workers (``--partition``), and their mini-batches.

Every partition starts from one permutation of the training set seeded by ``seed`` and is a
pure function of (seed, number of workers, dataset): every rank computes the same deal, no
example goes to two workers.

* ``iid`` (the default): the permuted examples dealt round-robin.
* ``classes:L`` (non-IID, as in the S3GD-MV authors' code): worker w holds the L classes
  ``order[(w*L + j) % C]``, j < L, where ``order`` is a permutation of the C classes seeded by
  ``seed + 1``; the examples of each class, in the permutation's order, are dealt round-robin
  among the workers holding it (a class no worker holds is not used).
* ``dirichlet:alpha`` (non-IID, label skew): for each class c (in order), worker shares
  ``p_c ~ Dir(alpha, ..., alpha)`` are drawn from a NumPy generator seeded by
  ``(seed, 2)``; the class's examples, in the permutation's order, are cut into consecutive
  runs of ``floor(cumsum(p_c) * n_c)`` boundaries, run w to worker w. Every example is used.
  Small alpha (0.1) gives each worker few classes, large alpha (100) nearly IID shards.

Each epoch reshuffles a worker's shard with a generator seeded by (seed, worker, epoch).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def dirichlet_shards(labels: torch.Tensor, perm: torch.Tensor, num_classes: int, workers: int,
                     alpha: float, seed: int) -> list[torch.Tensor]:
    """Every worker's example indices (sorted) under ``dirichlet:alpha``."""
    rng = np.random.default_rng([seed, 2])
    permuted = labels[perm]
    parts: list[list[torch.Tensor]] = [[] for _ in range(workers)]
    for cls in range(num_classes):
        members = perm[permuted == cls]
        shares = rng.dirichlet(np.full(workers, float(alpha)))
        if not np.isfinite(shares).all():
            raise ConfigError(f"partition dirichlet:{alpha:g}: alpha is too small to draw "
                              "shares from; use a larger alpha")
        cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        cuts = np.clip(cuts, 0, len(members))
        for w, piece in enumerate(np.split(np.arange(len(members)), cuts)):
            parts[w].append(members[torch.from_numpy(piece)])
    return [torch.sort(torch.cat(p)).values for p in parts]


class ShardSampler:
    """Mini-batches of worker ``worker`` (0-based) of ``workers``, seeded.

    ``partition`` is ``"iid"``, ``"classes:L"`` or ``"dirichlet:alpha"`` (module docstring).
    ``next()`` returns the next ``batch_size`` examples of the current epoch's order, starting
    a new epoch (``epoch`` += 1, ``cursor`` = 0) when fewer than a batch are left.
    """

    def __init__(self, data, worker: int, workers: int, batch_size: int, seed: int,
                 partition: str = "iid"):
        from .catalog import parse_partition
        perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
        kind, value = parse_partition(partition)
        if kind == "iid":
            self.index = perm[worker::workers]
        elif kind == "classes":
            classes = value
            c = data.num_classes
            if not 1 <= classes <= c:
                raise ConfigError(f"partition {partition!r}: L must be in 1..{c} (the task's "
                                  "classes)")
            order = torch.randperm(c, generator=torch.Generator().manual_seed(seed + 1)).tolist()
            held = [{order[(w * classes + j) % c] for j in range(classes)}
                    for w in range(workers)]
            labels = data.train_y[perm]
            parts = []
            for cls in sorted(held[worker]):
                holders = [w for w in range(workers) if cls in held[w]]
                parts.append(perm[labels == cls][holders.index(worker)::len(holders)])
            self.index = torch.sort(torch.cat(parts)).values
        else:
            shards = dirichlet_shards(data.train_y, perm, data.num_classes, workers, value, seed)
            sizes = [len(s) for s in shards]
            small = [w for w, n in enumerate(sizes) if n < batch_size]
            if small:
                w = small[0]
                raise ConfigError(
                    f"partition {partition!r} leaves worker {w} (rank {w + 1}) with "
                    f"{sizes[w]} examples, fewer than the batch size {batch_size} (shard "
                    f"sizes: {', '.join(map(str, sizes))}); use a larger alpha (more even "
                    "shares), a smaller --batch-size, or another --seed")
            self.index = shards[worker]
        self.classes = sorted(set(data.train_y[self.index].tolist()))
        if len(self.index) < batch_size:
            raise ValueError(f"worker {worker} (rank {worker + 1}) has {len(self.index)} "
                             f"examples, fewer than the batch size {batch_size} (partition "
                             f"{partition}, {workers} workers, {len(data.train_y)} training "
                             "examples): use a smaller --batch-size, fewer workers or more data")
        self.data, self.batch_size, self.seed, self.worker = data, batch_size, seed, worker
        self.epoch, self.cursor, self.order = -1, len(self.index), None

    def _shuffle(self, epoch: int) -> None:
        self.epoch = epoch
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.worker * 65_537 + epoch) % 2**63)
        self.order = self.index[torch.randperm(len(self.index), generator=gen)]

    def seek(self, epoch: int, cursor: int) -> None:
        """Continue from a saved ``(epoch, cursor)`` (a checkpoint): the next batch is the
        one an uninterrupted sampler would draw."""
        if epoch >= 0:
            self._shuffle(epoch)
        self.epoch, self.cursor = epoch, cursor

    def next(self):
        if self.cursor + self.batch_size > len(self.index):
            self._shuffle(self.epoch + 1)
            self.cursor = 0
        rows = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.data.train_x[rows], self.data.train_y[rows]
