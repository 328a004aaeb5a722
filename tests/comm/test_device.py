"""GPU path: CuPy kernels give the CPU kernels' bytes; GPU workers train end to end.

GPU tests skip cleanly on a machine without CuPy or without a GPU."""

import numpy as np
import pytest

from hpcgrad.kernels import cpu, generic
from hpcgrad.wire import round_up
from mpirun import run_mpi, train_several


def _gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 -- no CuPy, no driver, no device
        return 0


HAS_GPU = _gpu_count() > 0
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA GPU")
LENGTHS = [0, 1, 7, 63, 64, 65, 1000, 100_003]


CUDA_REFUSED = ["signum-mv", "ef-sgd", "terngrad"]


@pytest.fixture(scope="module")
def cuda_refused(tmp_path_factory):
    """``--device cuda`` runs of every algorithm of CUDA_REFUSED, one after another in one
    3-rank job (tests/mpirun.py's ``train_several``: the ranks start once)."""
    work = {name: tmp_path_factory.mktemp(name) for name in CUDA_REFUSED}
    return train_several(3, {name: (work[name], [
        "--algorithm", name, "--device", "cuda", "--iterations", "5", "--quiet",
        "--log", str(work[name] / "run.h5")]) for name in CUDA_REFUSED}, timeout=150)


@pytest.mark.skipif(HAS_GPU, reason="checks the message on a machine without a GPU")
@pytest.mark.timeout(200)
@pytest.mark.parametrize("algorithm", CUDA_REFUSED)
def test_cuda_device_without_a_gpu_is_a_clear_error(cuda_refused, algorithm):
    result = cuda_refused[algorithm]
    assert result.returncode == 2
    assert "selecting the device failed on rank 1" in result.stderr
    assert "--device cuda" in result.stderr


def _padded(n, xp=np):
    return xp.zeros(round_up((n + 7) // 8) or 8, dtype=np.uint8)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("n", LENGTHS)
def test_gpu_kernels_write_the_cpu_bytes(n):
    import cupy
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    x[::7] = 0
    host, dev = _padded(n), _padded(n, cupy)
    cpu.sign_pack(x, host)
    generic.sign_pack(cupy.asarray(x), dev)
    assert host.tobytes() == dev.get().tobytes()

    m_host, m_dev = x.copy(), cupy.asarray(x)
    g = rng.standard_normal(n).astype(np.float32)
    cpu.momentum_sign_pack(g, m_host, np.float32(0.9), np.float32(0.1), host)
    generic.momentum_sign_pack(cupy.asarray(g), m_dev, np.float32(0.9), np.float32(0.1), dev)
    assert host.tobytes() == dev.get().tobytes()
    assert m_host.tobytes() == m_dev.get().tobytes()

    workers = 4
    rows = np.zeros((workers, host.size), dtype=np.uint8)
    for k in range(workers):
        cpu.sign_pack(rng.standard_normal(n).astype(np.float32), rows[k])
    for tie in (generic.TIE_POSITIVE, generic.TIE_ZERO, generic.TIE_RANDOM):
        outs_h = [_padded(n) for _ in range(2)]
        outs_d = [_padded(n, cupy) for _ in range(2)]
        cpu.majority_vote(rows, n, tie, host, *outs_h)
        generic.majority_vote(cupy.asarray(rows), n, tie, cupy.asarray(host), *outs_d)
        assert outs_h[0].tobytes() == outs_d[0].get().tobytes()
        if tie == generic.TIE_ZERO:
            assert outs_h[1].tobytes() == outs_d[1].get().tobytes()

    p_host, p_dev = x.copy(), cupy.asarray(x)
    cpu.apply_sign_update(p_host, host, np.float32(0.01), np.float32(0.1))
    generic.apply_sign_update(p_dev, cupy.asarray(host), np.float32(0.01), np.float32(0.1))
    assert p_host.tobytes() == p_dev.get().tobytes()  # no FMA contraction on either side


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["signum-mv", "fp32-ps", "allreduce"])
def test_gpu_workers_train_and_log_the_cpu_byte_counts(tmp_path, algorithm):
    import h5py
    logs = {}
    for where in ("cpu", "cuda"):
        logs[where] = tmp_path / f"{where}.h5"
        result = run_mpi(3, ["train", "--algorithm", algorithm, "--device", where,
                             "--iterations", "40", "--quiet", "--log", str(logs[where])],
                         timeout=150)
        # the run ends by comparing every replica bit for bit: the CPU server's
        # and the GPU workers' parameters must be identical
        assert result.returncode == 0, result.stderr
    with h5py.File(logs["cpu"]) as a, h5py.File(logs["cuda"]) as b:
        assert "cuda" in b.attrs["devices"]
        for name in ("bytes_up", "bytes_down", "iteration"):
            assert np.array_equal(a["steps"][name][:], b["steps"][name][:])
        accuracy_cpu, accuracy_gpu = a["eval/accuracy"][-1], b["eval/accuracy"][-1]
        assert accuracy_gpu > 0.2  # well above chance (10 classes)
        assert abs(accuracy_gpu - accuracy_cpu) < 0.1
