"""Bring your own training loop: hpcgrad's exchange behind a torch optimizer.

Run the same script on every rank under ``mpiexec -n N`` (or ``srun``); rank 0 is the
parameter server, ranks 1..N-1 the workers::

    import hpcgrad.torch as hpc

    model = Net()                                     # the same seed on every rank
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    opt = hpc.DistributedOptimizer(opt, model, algorithm="s3gd-mv", sparsity=0.01,
                                   lr=0.003, log="runs/x.h5")   # rank 0 serves, then exits
    loader = DataLoader(data, batch_size=32, sampler=hpc.WorkerSampler(data))
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)                           # compress, exchange, update
    opt.finish()

Settings are ``hpcgrad train``'s options (keyword = option name), validated as there; the run
writes the same HDF5 traffic log (``hpcgrad analyze`` reads it) and checkpoints; any rank that
fails ends the job.  Modules: ``context.py`` (``init``, the failure policy), ``session.py``
(setup and one step: the exchange of ``hpcgrad.training.exchange``), ``control.py`` (the stop
protocol and the consistency checks of each step), ``params.py`` (flat parameters and fp32
master copies), ``optimizer.py``, ``server.py``, ``sampler.py``.  README "Your own training
loop" has the details and a worked example (``examples/``).
"""

from ..comm import waits as _waits

_waits.prefer_yield()  # before MPI_Init, which reads it: ranks outnumbering cores yield
from mpi4py import MPI as _MPI  # noqa: E402 -- MPI_Init, after the wait setting

from .context import AgreedError, Context, init, install_failure_policy
from .control import NonFiniteGradientError, StepMismatchError
from .optimizer import DistributedOptimizer
from .sampler import WorkerSampler
from .server import ServeSummary, serve
from .session import MEAN_METHODS

# From the import on, an exception nobody caught on any rank ends the job (MPI_Abort), as
# ``python -m mpi4py`` does: an error in the user's script before init() -- its data loading,
# a WorkerSampler built on rank 0 -- would otherwise leave that rank in MPI_Finalize and the
# others waiting in init()'s first collective, forever.  init() installs it for its comm too.
install_failure_policy(_MPI.COMM_WORLD)

__all__ = ["AgreedError", "Context", "DistributedOptimizer", "MEAN_METHODS",
           "NonFiniteGradientError", "ServeSummary", "StepMismatchError", "WorkerSampler",
           "init", "serve"]
