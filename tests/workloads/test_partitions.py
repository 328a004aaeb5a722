"""Partitions of the training set among workers (hpcgrad/workloads/partitions.py): iid and classes:L as
before, dirichlet:alpha deterministic and covering, and the sampler's epochs."""

import numpy as np
import pytest
import torch

from hpcgrad.workloads import datasets, partitions
from hpcgrad import workloads
from hpcgrad.workloads.catalog import parse_partition, partition_classes
from hpcgrad.errors import ConfigError

DATA = datasets.synthetic(0, train=3000, test=16)


def shards(partition, workers=4, seed=0, batch=8, data=DATA):
    return [partitions.ShardSampler(data, w, workers, batch, seed, partition=partition)
            for w in range(workers)]


def _old_classes_index(data, worker, workers, seed, classes):
    """The classes:L deal as the sampler computed it before dirichlet existed."""
    perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))
    c = data.num_classes
    order = torch.randperm(c, generator=torch.Generator().manual_seed(seed + 1)).tolist()
    held = [{order[(w * classes + j) % c] for j in range(classes)} for w in range(workers)]
    labels = data.train_y[perm]
    parts = []
    for cls in sorted(held[worker]):
        holders = [w for w in range(workers) if cls in held[w]]
        parts.append(perm[labels == cls][holders.index(worker)::len(holders)])
    return torch.sort(torch.cat(parts)).values


@pytest.mark.parametrize("seed", [0, 7])
def test_iid_and_classes_deals_are_unchanged(seed):
    perm = torch.randperm(3000, generator=torch.Generator().manual_seed(seed))
    for w, s in enumerate(shards("iid", seed=seed)):
        assert torch.equal(s.index, perm[w::4])
    for L in (1, 2, 3, 10):
        for w, s in enumerate(shards(f"classes:{L}", seed=seed)):
            assert torch.equal(s.index, _old_classes_index(DATA, w, 4, seed, L))
    assert workloads.ShardSampler is partitions.ShardSampler


def test_sampler_epochs_and_cursor():
    s = partitions.ShardSampler(DATA, 2, 4, 100, 3)
    assert (s.epoch, s.cursor) == (-1, 750)
    seen = []
    for _ in range(7):  # 750 examples: 7 batches of 100, then a new epoch
        x, y = s.next()
        assert x.shape == (100, 32) and y.shape == (100,)
        seen.append(x)
    assert (s.epoch, s.cursor) == (0, 700)
    s.next()
    assert (s.epoch, s.cursor) == (1, 100)
    rows = torch.cat(seen)
    assert len({tuple(r.tolist()) for r in rows}) == 700  # no repeat within an epoch


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 100.0])
@pytest.mark.parametrize("workers", [2, 4, 7])
def test_dirichlet_deals_every_example_to_exactly_one_worker(alpha, workers):
    perm = torch.randperm(3000, generator=torch.Generator().manual_seed(0))
    parts = partitions.dirichlet_shards(DATA.train_y, perm, 10, workers, alpha, 0)
    everything = torch.cat(parts)
    assert len(everything) == 3000 and torch.equal(torch.sort(everything).values,
                                                   torch.arange(3000))
    assert all(torch.equal(p, torch.sort(p).values) for p in parts)


def test_dirichlet_is_deterministic_given_seed_and_world_size():
    first = shards("dirichlet:0.5", batch=1)
    again = shards("dirichlet:0.5", batch=1)
    assert all(torch.equal(a.index, b.index) for a, b in zip(first, again))
    other_seed = shards("dirichlet:0.5", seed=1, batch=1)
    assert any(not torch.equal(a.index, b.index) for a, b in zip(first, other_seed))
    sampler = partitions.ShardSampler(DATA, 1, 4, 1, 0, partition="dirichlet:0.5")
    assert torch.equal(sampler.index, first[1].index)  # one worker alone computes its shard


def test_dirichlet_alpha_controls_the_skew():
    def label_shares(alpha):
        out = []
        for s in shards(f"dirichlet:{alpha}", batch=1):
            counts = np.bincount(DATA.train_y[s.index].numpy(), minlength=10)
            out.append(counts / counts.sum())
        return np.array(out)

    overall = np.bincount(DATA.train_y.numpy(), minlength=10) / 3000
    skewed, even = label_shares(0.1), label_shares(1000)
    assert np.abs(even - overall).max() < 0.05
    assert np.abs(skewed - overall).max() > 0.3
    assert (skewed > 0.01).sum(axis=1).mean() < 6  # few classes per worker


def test_a_dirichlet_shard_below_the_batch_size_is_named_with_a_hint():
    small = datasets.synthetic(0, train=200, test=8)
    with pytest.raises(ConfigError, match=r"partition 'dirichlet:0.05' leaves worker \d "
                                          r"\(rank \d\) with \d+ examples, fewer than the "
                                          r"batch size 16 .*use a larger alpha"):
        partitions.ShardSampler(small, 0, 4, 16, 0, partition="dirichlet:0.05")


def test_an_empty_classes_shard_is_named():
    two = datasets.Dataset(DATA.train_x[:40], torch.arange(40) % 2, DATA.test_x,
                           DATA.test_y, 10)
    with pytest.raises(ValueError, match=r"worker \d \(rank \d\) has 0 examples, fewer than "
                                         r"the batch size 8 \(partition classes:1"):
        shards("classes:1", data=two)


def test_partition_parsing():
    assert parse_partition("iid") == ("iid", None)
    assert parse_partition("classes:3") == ("classes", 3)
    assert parse_partition("dirichlet:0.25") == ("dirichlet", 0.25)
    assert partition_classes("dirichlet:1") is None and partition_classes("classes:2") == 2
    for bad in ("dirichlet:", "dirichlet:-1", "dirichlet:nan", "classes:0", "classes:x", "lda"):
        with pytest.raises(ConfigError, match="partition"):
            parse_partition(bad)
