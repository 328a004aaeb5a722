"""Training workloads that need no download: the embedded default task.

``synthetic`` is a 10-class problem generated from the seed: inputs are
Gaussian, labels come from a fixed random two-layer "teacher" network, so a
small MLP can learn it well but not perfectly within a few hundred steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return self.train_x.shape[1]


def synthetic(seed: int, *, train: int = 16384, test: int = 2048, features: int = 32,
              classes: int = 10, teacher_hidden: int = 64) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(features, teacher_hidden, generator=gen) / features ** 0.5
    w2 = torch.randn(teacher_hidden, classes, generator=gen) / teacher_hidden ** 0.5
    x = torch.randn(train + test, features, generator=gen)
    logits = torch.tanh(x @ w1) @ w2 * 3.0
    y = logits.argmax(1)
    return Dataset(x[:train], y[:train], x[train:], y[train:], classes)


def mlp(num_features: int, hidden: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


class ShardSampler:
    """Mini-batches of worker ``worker`` (0-based) of ``workers``, seeded.

    ``partition="iid"`` (the default): the training set is dealt round-robin after one
    seeded shuffle.  ``partition="classes:L"`` (non-IID): worker w holds the L classes
    ``order[(w*L + j) % C]``, j < L, where ``order`` is a permutation of the C classes
    seeded by ``seed + 1``; the examples of each class, in the seeded shuffle's order, are
    dealt round-robin among the workers holding it (so no two workers share an example;
    a class no worker holds is not used).  Either way each epoch reshuffles the shard
    with a generator seeded by (seed, worker, epoch).
    """

    def __init__(self, data: Dataset, worker: int, workers: int, batch_size: int, seed: int,
                 partition: str = "iid"):
        from .config import partition_classes
        from .errors import ConfigError
        perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
        classes = partition_classes(partition)
        if classes is None:
            self.index = perm[worker::workers]
        else:
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
        self.classes = sorted(set(data.train_y[self.index].tolist()))
        if len(self.index) < batch_size:
            raise ValueError(f"worker {worker} has {len(self.index)} examples, fewer than "
                             f"the batch size {batch_size}")
        self.data, self.batch_size, self.seed, self.worker = data, batch_size, seed, worker
        self.epoch, self.cursor, self.order = -1, len(self.index), None

    def next(self):
        if self.cursor + self.batch_size > len(self.index):
            self.epoch += 1
            gen = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.worker * 65_537 + self.epoch) % 2**63)
            self.order = self.index[torch.randperm(len(self.index), generator=gen)]
            self.cursor = 0
        rows = self.order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.data.train_x[rows], self.data.train_y[rows]
