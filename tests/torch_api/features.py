"""What user scripts do, in three short wrapped runs (run on every rank); each asserts what it
checks and the script prints ``features ok`` on rank 1 at the end.

    python features.py OUT_DIR

1. ``update="optimizer"`` with Adam (fp32-ps): a DataLoader over WorkerSampler, bf16 autocast,
   two micro-batches per step, clipping, a frozen layer, BatchNorm buffers broadcast from
   worker 1 every 2 steps (equal on every rank after the last step);
2. a model converted with ``.half()`` (signum-mv): fp32 master copies, fp16 parameters equal on
   every rank and moved;
3. checkpoints with the torch optimizer state: 4 steps with a checkpoint after 2, then a run
   resumed from it that ends with the same parameters;
4. fp16 autocast with a GradScaler and ``nonfinite="skip"``: the first step overflows (scale
   2**18) and is skipped on every rank, the next 7 are exchanged;
5. the checkpoint of 3 with one byte of worker 1's optimizer-state file flipped: resume is
   refused on every rank, naming the file.
"""

import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import hpcgrad.torch as hpc
from hpcgrad.comm.agreement import SetupError

out = sys.argv[1]


def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                          nn.ReLU(), nn.Linear(16, 3))
    model[3].requires_grad_(False)
    return model


def same_everywhere(comm, tensors, what):
    digests = comm.allgather([t.detach().float().numpy().tobytes() for t in tensors])
    assert all(d == digests[0] for d in digests), f"{what} differ between ranks"


# 1. a torch optimizer, a DataLoader, autocast, accumulation, clipping, frozen layer, buffers
ctx = hpc.init(algorithm="fp32-ps", log=f"{out}/adam.h5", quiet=True)
model = net()
frozen = model[3].weight.detach().clone()
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
if ctx.is_server:
    hpc.serve(model, opt, ctx)
else:
    opt = hpc.DistributedOptimizer(opt, model, ctx, buffers_every=2)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,),
                                                                         generator=g))
    loader = DataLoader(data, batch_size=8, sampler=hpc.WorkerSampler(data, ctx), drop_last=True)
    for i, (x, y) in enumerate(loader):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y) / 2
        loss.backward()
        if i % 2 == 1:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step(loss=loss)
            opt.zero_grad()
    assert opt.steps == 256 // ctx.num_workers // 8 // 2, opt.steps
    assert opt.optimizer.state, "Adam took no step"
    opt.finish()
assert torch.equal(model[3].weight, frozen), "the frozen layer moved"
same_everywhere(ctx.comm, list(model.buffers()), "buffers broadcast at the last step")

# 2. a float16 model: fp32 master copies
ctx = hpc.init(algorithm="signum-mv", log=f"{out}/half.h5", lr=0.01, quiet=True)
model = net().half()
before = [p.detach().clone() for p in model.parameters()]
opt = torch.optim.SGD(model.parameters(), lr=0.1)
if ctx.is_server:
    hpc.serve(model, opt, ctx)
else:
    opt = hpc.DistributedOptimizer(opt, model, ctx)
    g = torch.Generator().manual_seed(ctx.rank)
    for _ in range(3):
        opt.zero_grad()
        x = torch.randn(8, 8, generator=g).half()
        F.cross_entropy(model(x).float(), torch.randint(0, 3, (8,), generator=g)).backward()
        opt.step()
    opt.finish()
assert all(p.dtype == torch.float16 for p in model.parameters())
assert not torch.equal(model[0].weight, before[0]), "the fp16 parameters did not move"
same_everywhere(ctx.comm, list(model.parameters()), "fp16 parameters")


# 3. checkpoints hold the torch optimizer's state: a resumed run ends where an unbroken one does
def run(log, steps, **settings):
    ctx = hpc.init(algorithm="fp32-ps", log=f"{out}/{log}", quiet=True, **settings)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if ctx.is_server:
        return hpc.serve(model, opt, ctx).params_sha256
    opt = hpc.DistributedOptimizer(opt, model, ctx)
    while opt.steps < steps:
        g = torch.Generator().manual_seed(100 * ctx.rank + opt.steps)  # data of step t
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 8, generator=g)),
                        torch.randint(0, 3, (8,), generator=g)).backward()
        opt.step()
    opt.finish()
    return opt.session.digest


whole = run("whole.h5", 4, checkpoint_every=2, checkpoint_dir=f"{out}/ck")
resumed = run("resumed.h5", 4, resume=f"{out}/ck/step-00000002")
assert whole == resumed, "a resumed run ended elsewhere"

# 4. fp16 autocast, a loss scaler, and overflowing steps skipped on every rank
ctx = hpc.init(algorithm="fp32-ps", log=f"{out}/scaler.h5", quiet=True)
model = net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
if ctx.is_server:
    hpc.serve(model, opt, ctx)
else:
    opt = hpc.DistributedOptimizer(opt, model, ctx, nonfinite="skip")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**18)
    g = torch.Generator().manual_seed(ctx.rank)
    for _ in range(8):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(torch.randn(8, 8, generator=g)),
                                   torch.randint(0, 3, (8,), generator=g))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        opt.step()
        scaler.update()
    assert opt.steps == 7, f"{opt.steps} steps exchanged, expected 7 (one overflow skipped)"
    opt.finish()
if ctx.rank == 1:
    print("features ok")

# 5. a damaged optimizer-state file is refused on resume, naming the file, on every rank alike
if ctx.rank == 0:
    shutil.copytree(f"{out}/ck/step-00000002", f"{out}/damaged")
    state = Path(f"{out}/damaged/torch-rank-00001.pt")
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
ctx.comm.Barrier()
try:
    run("damaged.h5", 4, resume=f"{out}/damaged")
except SetupError as exc:
    assert "torch-rank-00001.pt" in str(exc) and "SHA-256" in str(exc), exc
else:
    raise AssertionError("a damaged optimizer-state file was resumed")
if ctx.rank == 1:
    print("damaged optimizer state refused")
