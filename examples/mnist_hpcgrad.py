"""The plain PyTorch script of mnist_plain.py with hpcgrad's exchange (generated data).

    mpiexec -n 5 python examples/mnist_hpcgrad.py --algorithm s3gd-mv --epochs 2

Rank 0 is the parameter server (the DistributedOptimizer constructor runs its loop there,
then exits), ranks 1..4 are the workers.  ``diff examples/mnist_plain.py
examples/mnist_hpcgrad.py`` is the whole change (README, "Your own training loop").
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hpcgrad.torch as hpc


def generated_mnist(n: int, seed: int = 0):
    """n 28x28 "digits" whose label a fixed random linear teacher reads from the 7x7-pixel
    block means; the first n // 8 are held out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = (F.avg_pool2d(x, 7).flatten(1) @ torch.randn(16, 10, generator=g)).argmax(1)
    held = n // 8
    return TensorDataset(x[held:], y[held:]), TensorDataset(x[:held], y[:held])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5, stride=2)
        self.fc1 = nn.Linear(8 * 12 * 12, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def evaluate(model, data):
    with torch.no_grad():
        x, y = data.tensors
        out = model(x)
        return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--examples", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--algorithm", default="s3gd-mv")
    p.add_argument("--log", default="runs/mnist-example.h5")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, test = generated_mnist(args.examples)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer = hpc.DistributedOptimizer(optimizer, model, algorithm=args.algorithm,
                                         log=args.log, overwrite=True,
                                         evaluate=lambda m: evaluate(m, test))
    loader = DataLoader(train, batch_size=args.batch_size, sampler=hpc.WorkerSampler(train),
                        drop_last=True)
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            loss = F.cross_entropy(model(x), y) / args.accumulate
            loss.backward()
            if (i + 1) % args.accumulate:
                continue
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step(loss=loss)
            optimizer.zero_grad()
        scheduler.step()
        print(f"epoch {epoch}: test loss {evaluate(model, test)[0]:.4f}, "
              f"accuracy {evaluate(model, test)[1]:.2%}")
    optimizer.finish()


if __name__ == "__main__":
    main()
