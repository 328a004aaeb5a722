"""``--validation-fraction F``: a validation set carved from the training set, disjoint from
what the workers train on, the same draw for every seed, and refused when it would leave
either side empty.  Logged apart from /eval under mpiexec: tests/workloads/test_digits_mpi.py."""

import pytest
import torch

from hpcgrad.errors import ConfigError
from hpcgrad.training.config import TrainConfig
from hpcgrad.workloads import datasets


def load(**settings):
    return datasets.load(TrainConfig(**settings).resolved())


def rows(x):
    return {tuple(r.flatten().tolist()) for r in x}


def test_the_validation_set_is_carved_from_the_training_set():
    full = load(examples=1000)
    carved = load(examples=1000, validation_fraction=0.25)
    assert len(carved.val_y) == 250 and len(carved.train_y) == 750
    # disjoint, and together exactly the training set; the test set untouched
    assert not rows(carved.val_x) & rows(carved.train_x)
    assert rows(carved.val_x) | rows(carved.train_x) == rows(full.train_x)
    assert torch.equal(carved.test_x, full.test_x)
    # the training examples keep their order (the partition deals them from it)
    kept = [i for i, r in enumerate(full.train_x) if tuple(r.tolist()) in rows(carved.train_x)]
    assert torch.equal(full.train_x[kept], carved.train_x)
    assert load(examples=1000).val_x is None


def test_the_draw_is_the_same_for_every_seed():
    a, b = load(dataset="digits", validation_fraction=0.1, seed=0), \
        load(dataset="digits", validation_fraction=0.1, seed=3)
    assert len(a.val_y) == round(0.1 * 1438)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)


@pytest.mark.parametrize("settings, message", [
    (dict(examples=10, validation_fraction=0.01), "holds out 0; it must leave at least one"),
    (dict(examples=10, validation_fraction=0.99), "holds out 10; it must leave at least one"),
])
def test_a_fraction_that_empties_a_side_is_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        load(**settings)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 2])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ConfigError, match="validation-fraction"):
        TrainConfig(validation_fraction=fraction).resolved()
