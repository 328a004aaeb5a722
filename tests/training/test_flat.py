"""FlatModel: parameters and gradients as views of two flat buffers; the finiteness check."""

import pytest
import torch
from torch import nn

from hpcgrad.errors import NonFiniteError
from hpcgrad.training.flat import FlatModel


def _flat():
    torch.manual_seed(0)
    return FlatModel(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))


def test_large_finite_gradients_whose_sum_overflows_pass():
    flat = _flat()
    flat.grads.fill_(3e38)  # every term finite, the float32 sum is inf
    assert not torch.isfinite(flat.grads.sum())
    flat.check_grads_finite()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_gradient_names_its_tensor(bad):
    flat = _flat()
    flat.model[1].weight.grad[1, 2] = bad  # a view of the flat gradient
    with pytest.raises(NonFiniteError, match=r"in tensor\(s\): 1\.weight$"):
        flat.check_grads_finite()


def test_opposite_infinities_in_two_tensors_are_both_named():
    flat = _flat()
    flat.model[0].bias.grad[0] = float("inf")
    flat.model[1].bias.grad[0] = float("-inf")
    with pytest.raises(NonFiniteError, match=r"0\.bias, 1\.bias"):
        flat.check_grads_finite()
