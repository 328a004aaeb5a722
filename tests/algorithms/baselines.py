"""Shared by the tests of the uncompressed baselines (test_dense_ps.py, test_allreduce.py):
the model size, seeded gradients, the PyTorch reference optimizer and a short training run."""

import numpy as np
import torch

from hpcgrad import workloads
from hpcgrad.training import runtime
from hpcgrad.training.config import TrainConfig

SEGMENTS = [300, 20, 180, 7]
D = sum(SEGMENTS)


def gradients(workers, step, scale=1.0):
    rng = np.random.default_rng([workers, step])
    return [(rng.standard_normal(D) * scale).astype(np.float32) for _ in range(workers)]


class TorchSGD:
    """The reference: ``torch.optim.SGD`` (momentum, weight decay) on one flat tensor."""

    def __init__(self, start, lr, momentum, weight_decay):
        self.x = torch.tensor(start, dtype=torch.float32, requires_grad=True)
        self.opt = torch.optim.SGD([self.x], lr=lr, momentum=momentum,
                                   weight_decay=weight_decay)

    def step(self, grad):
        self.x.grad = torch.from_numpy(np.asarray(grad, dtype=np.float32).copy())
        self.opt.step()
        return self.x.detach().numpy()


def train(comm, tmp_path, algorithm, iterations=20, seed=0):
    """A short ``runtime.train`` on every rank from rank 0's seeded initial parameters;
    returns (summary on rank 0 else None, initial flat parameters, final flat parameters)."""
    config = TrainConfig(algorithm=algorithm, iterations=iterations, eval_every=0,
                         flush_every=7, quiet=True, seed=seed,
                         log=str(tmp_path / f"{algorithm}.h5")).resolved()
    data = workloads.synthetic(config.seed, train=2048, test=256)
    torch.manual_seed(seed)  # rank 0's initial parameters (broadcast to every rank)
    model = workloads.mlp(data.num_features, 32, data.num_classes)
    initial = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    summary = runtime.train(config, comm, model=model, data=data)
    final = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    return summary, initial, final
