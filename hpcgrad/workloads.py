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
    """Mini-batches of worker ``worker`` (0-based) of ``workers``, IID, seeded.

    The training set is dealt round-robin after one seeded shuffle; each epoch
    reshuffles the shard with a generator seeded by (seed, worker, epoch).
    """

    def __init__(self, data: Dataset, worker: int, workers: int, batch_size: int, seed: int):
        perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
        self.index = perm[worker::workers]
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
