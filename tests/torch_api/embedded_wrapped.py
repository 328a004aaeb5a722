"""The embedded task trained by hpcgrad.torch, as ``hpcgrad train`` trains it (run on every
rank): the same dataset, model init, data order (``ShardSampler``) and settings.

    python embedded_wrapped.py OUT_DIR ITERATIONS ALGORITHM [ALGORITHM ...]

writes OUT_DIR/wrapped-ALGORITHM.h5 for each algorithm, one after the other in one job, and
first OUT_DIR/train-ALGORITHM.h5 with ``hpcgrad train``'s ``runtime.train`` and the same
settings (one job for both: the ranks import torch and compile the kernels once).
"""

import sys

import torch
import torch.nn.functional as F

import hpcgrad.torch as hpc
from hpcgrad.training import runtime
from hpcgrad.training.config import TrainConfig
from hpcgrad.workloads import datasets, models, partitions

out, iterations, *names = sys.argv[1:]
for name in names:
    runtime.train(TrainConfig(algorithm=name, iterations=int(iterations),
                              log=f"{out}/train-{name}.h5", eval_every=0, quiet=True).resolved())
for name in names:
    ctx = hpc.init(algorithm=name, iterations=int(iterations), log=f"{out}/wrapped-{name}.h5",
                   eval_every=0, quiet=True)
    cfg = ctx.config
    data = datasets.load(cfg)
    torch.manual_seed(cfg.seed)
    model = models.build(cfg, data)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    if ctx.is_server:
        hpc.serve(model, opt, ctx)
        continue
    opt = hpc.DistributedOptimizer(opt, model, ctx, update="algorithm")
    sampler = partitions.ShardSampler(data, ctx.worker, ctx.num_workers, cfg.batch_size,
                                      cfg.seed, partition=cfg.partition)
    for _ in range(cfg.iterations):
        x, y = sampler.next()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
    opt.finish()
