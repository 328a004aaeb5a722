"""Shared pieces of the benchmarks: sizes, timing, memory checks, machine facts."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import time

from ..errors import HpcgradError

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


class BenchError(HpcgradError, ValueError):
    """A benchmark cannot run as asked (bad size, not enough memory or ranks)."""


def parse_count(text: str, what: str = "--params") -> int:
    """``"25.6M"``, ``"1e6"``, ``"1000000"`` -> a positive integer number of coordinates."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", str(text))
    if not m:
        raise BenchError(f"{what} must be a count like 1000000, 1e6, 1M or 25.6M, got {text!r}")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise BenchError(f"{what} must be a whole number >= 1, got {text!r}")
    return int(value)


def median(values) -> float:
    return float(statistics.median(values))


def time_calls(fn, repeat: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def available_memory() -> int:
    """Bytes this node can still give out: MemAvailable, else free physical pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not refuse


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def check_fits(need: int, available: int, what: str, hint: str) -> None:
    """Refuse (before allocating) when ``need`` bytes exceed 90% of ``available``."""
    if need > 0.9 * available:
        raise BenchError(f"{what} needs about {gib(need)} of memory but only {gib(available)} "
                         f"is available on this node; {hint}")


def machine() -> dict:
    """Facts to print next to the figures (the machines are shared and noisy)."""
    import numba
    import numpy
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    total = None
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": model, "cores": os.cpu_count(), "memory_bytes": total,
            "load_average": load, "python": platform.python_version(),
            "numpy": numpy.__version__, "numba": numba.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def machine_line(info: dict) -> str:
    mem = gib(info["memory_bytes"]) if info.get("memory_bytes") else "?"
    return (f"{info['cpu']}, {info['cores']} cores, {mem}; load average "
            f"{info['load_average']}; numpy {info['numpy']}, numba {info['numba']}")


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def idle_barrier(comm, poll: float = 0.005) -> None:
    """A barrier that sleeps instead of spinning, so that waiting ranks leave the
    cores to the rank being measured (MPICH's blocking waits busy-poll)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll)
