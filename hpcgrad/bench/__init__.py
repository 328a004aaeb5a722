"""``hpcgrad bench``: measurements of the exchange, the kernels and the runtime.

* :mod:`.micro` -- pack / vote / decode+update kernels against ``np.copyto`` of
  the fp32 input, in one process (no MPI);
* :mod:`.exchange` -- the parameter-server exchange of every algorithm (driving
  :mod:`hpcgrad.training.exchange`, the code training runs) against a fp32 ``Allreduce``,
  under ``mpiexec``; plus the micro-benchmarks on rank 0;
* :mod:`.overhead` -- the runtime's per-step cost outside compute, codec and MPI;
* :mod:`.overlap` -- whether bucketed ``Igatherv``/``Ibcast`` pipelining gains.

Benchmarks are commands, not timed tests; ``docs/benchmarks.md`` holds results.
"""
