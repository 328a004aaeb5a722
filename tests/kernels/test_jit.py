"""kernels/jit.py: Numba is imported on the first kernel call, and kernels stay kernels."""

import json
import subprocess
import sys

PROBE = r"""
import json, sys
import numpy as np
from hpcgrad.kernels import cpu, quantize
from hpcgrad.kernels.jit import LazyKernel
from hpcgrad.kernels.jit import njit as lazy_njit

@lazy_njit()
def early(k, i):  # a script's kernel, made before Numba is loaded, held in a closure below
    return quantize.uniform(k, i) * 2.0

report = {"numba_at_import": "numba" in sys.modules,
          "lazy_before": isinstance(vars(quantize)["uniform"], LazyKernel) and
          isinstance(early, LazyKernel)}
held = {"early": early}
key = quantize.stream_key(3, 4, 5)          # the first call compiles
report["numba_after_call"] = "numba" in sys.modules
report["global_is_dispatcher"] = type(vars(quantize)["uniform"]).__name__
u = quantize.uniform(key, 7)
# A Numba kernel calling a lazy kernel that no module global of hpcgrad holds.
from numba import njit
lazy = held["early"]
@njit
def user_kernel(k, i):
    return lazy(k, i)
report["user_kernel"] = bool(user_kernel(key, 7) == 2.0 * u) and isinstance(lazy, LazyKernel)
print(json.dumps(report))
"""


def test_numba_loads_on_the_first_kernel_call_and_kernels_call_kernels():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"numba_at_import": False, "lazy_before": True, "numba_after_call": True,
                      "global_is_dispatcher": "CPUDispatcher", "user_kernel": True}
