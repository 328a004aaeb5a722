"""A small wrapped run that goes wrong in one way on one rank (run on every rank):

    python bad_input.py CASE LOG

CASE: ``ok`` (no fault; the script ends without finish(): the exit handler finishes),
``early`` (rank 2 stops one step before the others), ``differ`` (rank 2's model differs at
wrap time), ``broadcast`` (as ``differ``, wrapped with sync="broadcast": no error),
``none-grad`` (rank 2 leaves one parameter's gradient None), ``nan`` (rank 2's
gradient of one parameter is NaN), ``skip`` (as ``nan`` with nonfinite="skip": skipped),
``crash`` (rank 2 raises a plain exception after wrapping), ``before-init`` (rank 2 raises
before init(), e.g. loading its data), ``twice`` (the workers wrap the model a second time
inside the loop), ``scaler`` (fp32-ps with a ``GradScaler`` and ``scaler.step(opt)``;
rank 2's scaled gradient overflows at step 2), ``skip-fp32`` (as ``skip``, with fp32-ps: the
same parameters as ``scaler``), ``groups`` (parameter groups with different learning rates under a sign method),
``bad-setting`` (``lr=-1``), ``unknown-setting`` (``sparsty=0.1``).
"""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from mpi4py import MPI

import hpcgrad.torch as hpc

case, log = sys.argv[1:3]
torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.extra = nn.Linear(8, 3)

    def forward(self, x, use_extra=True):
        h = torch.relu(self.body(x))
        return self.head(h) + (self.extra(h) if use_extra else 0)


model = Net()
if case == "before-init" and MPI.COMM_WORLD.Get_rank() == 2:
    raise FileNotFoundError("the user's data file")
settings = {"bad-setting": {"lr": -1.0}, "unknown-setting": {"sparsty": 0.1}}.get(case, {})
algorithm = "fp32-ps" if case in ("scaler", "skip-fp32") else "signum-mv"
ctx = hpc.init(algorithm=algorithm, log=log, flush_every=2, quiet=True, **settings)
if case in ("differ", "broadcast") and ctx.rank == 2:
    with torch.no_grad():
        model.head.bias[0] += 1
opt = torch.optim.SGD(model.parameters(), lr=0.1)
if case == "groups":  # a part "frozen" by lr=0: the sign method would update it anyway
    opt = torch.optim.SGD([{"params": model.body.parameters(), "lr": 0.0},
                           {"params": [*model.head.parameters(), *model.extra.parameters()]}],
                          lr=0.1)
opt = hpc.DistributedOptimizer(opt, model, ctx,
                               nonfinite="skip" if case in ("skip", "skip-fp32") else "error",
                               sync="broadcast" if case == "broadcast" else "check")
steps = 4 - (case == "early" and ctx.rank == 2)
gen = torch.Generator().manual_seed(ctx.rank)
# A power of 2: unscaling is exact, as with no scaler at all.
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if case == "scaler" else None
for step in range(steps):
    x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    opt.zero_grad()
    loss = F.cross_entropy(model(x, use_extra=not (case == "none-grad" and ctx.rank == 2)), y)
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if case == "none-grad" and ctx.rank == 2:
        model.extra.weight.grad = model.extra.bias.grad = None
    if case in ("nan", "skip", "skip-fp32") and ctx.rank == 2 and step == 2:
        model.head.weight.grad[0, 0] = float("nan")
    if case == "scaler" and ctx.rank == 2 and step == 2:
        model.head.weight.grad[0, 0] = float("inf")
    if case == "crash" and ctx.rank == 2 and step == 1:
        raise RuntimeError("a bug in the user's loop")
    if case == "scaler":
        scaler.step(opt, loss=loss)
        scaler.update()
    else:
        opt.step(loss=loss)
    if case == "twice" and step == 1:
        opt = hpc.DistributedOptimizer(opt.optimizer, model, ctx)
if ctx.rank == 1:
    print(f"rank 1 completed {opt.steps} exchanges")
