"""On a GPU: the device-side worker steps (s3gd-mv, topk, qsgd, dq-sgd, terngrad:
hpcgrad/compression/on_device.py; ef-sgd: hpcgrad/compression/on_device_feedback.py) with
CuPy arrays send the CPU path's bytes and leave the CPU path's parameters and residuals; a
steady-state step takes no new device memory from the driver (CuPy's pool stops growing).

Written without a GPU and never run yet (see tests/gpu/run.sh); skips without CuPy or a GPU.
"""

import numpy as np
import pytest

from hpcgrad.algorithms import create
from hpcgrad.algorithms.step import StepContext
from hpcgrad.compression.selection import TopKSelector, k_by_fraction
from hpcgrad.kernels.device_steps import DeviceTopKSelector
from hpcgrad.training.config import TrainConfig
from hpcgrad.training.exchange import StagedMessage
from hpcgrad.wire import Header, MessageBuffer
from hpcgrad.wire.codecs import segment_offsets

try:
    import cupy
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001 -- no CuPy, no driver, no device
    HAS_GPU = False

pytestmark = [pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA GPU"),
              pytest.mark.gpu]


@pytest.mark.parametrize("rule", ["exact", "threshold"])
@pytest.mark.parametrize("segments", [(7,), (13, 1, 30), (70001,), (1_000_003, 17)])
def test_cupy_selection_equals_the_cpu_path(rule, segments):
    rng = np.random.default_rng(0)
    d = sum(segments)
    ks = k_by_fraction(segments, 0.01)
    offsets = segment_offsets(segments)
    for values in (rng.standard_normal(d).astype(np.float32),
                   (rng.integers(-3, 4, d) * np.float32(0.5)).astype(np.float32)):
        cpu = TopKSelector(offsets, segments, ks, rule)
        cap = cpu.capacity + len(segments)
        p0, n0 = np.zeros(cap, np.int64), np.zeros(cap, np.uint8)
        p1, n1 = np.zeros(cap, np.int64), np.zeros(cap, np.uint8)
        nnz = cpu.select(values, p0, n0)
        got, _ = DeviceTopKSelector(offsets, segments, ks, rule).select(cupy.asarray(values),
                                                                        p1, n1)
        assert got == nnz
        np.testing.assert_array_equal(p1[:nnz], p0[:nnz])
        np.testing.assert_array_equal(n1[:nnz], n0[:nnz])


def context(alg, rank, step, params=None):
    return StepContext(rank, alg.num_workers, alg.shard, params, "cuda", alg.config.lr, step)


def uplink_buffer(alg, sender):
    d = alg.num_params
    capacity = max(c.max_body_length(d) for c in alg.uplink_codecs())
    return MessageBuffer(Header(alg.uplink.id, d, capacity, 0, sender), variable=True)


def build(name, d, segments, **settings):
    return create(TrainConfig(algorithm=name, **settings).resolved(), d, 2, list(segments))


@pytest.mark.parametrize("name,settings", [
    ("s3gd-mv", {}), ("s3gd-mv", {"selection": "threshold"}), ("s3gd-mv", {"momentum": 0.9}),
    ("s3gd-mv", {"weight_decay": 0.01}), ("topk", {}), ("topk", {"topk_values": "fp16"}),
    ("topk", {"topk_selection": "aggregate-hint"}), ("topk", {"topk_selection": "union-boost"}),
    ("topk", {"topk_selection": "shared-random", "unbiased": True}),
    ("qsgd", {}), ("qsgd", {"bits": 2}), ("qsgd", {"bits": 16}), ("dq-sgd", {}),
    ("terngrad", {}), ("terngrad", {"terngrad_clip": 0.0}),
    ("ef-sgd", {"compressor": "scaled-sign"}), ("ef-sgd", {"compressor": "topk"}),
    ("ef-sgd", {"compressor": "randomk"}), ("ef-sgd", {"compressor": "qsgd"}),
    ("ef-sgd", {"compressor": "identity"}), ("ef-sgd", {"compressor": "topk", "feedback": "none"}),
    ("ef-sgd", {"compressor": "scaled-sign", "feedback": "step-ahead", "weight_decay": 0.01})])
def test_cupy_worker_sends_the_cpu_bytes_through_a_staged_device_twin(name, settings):
    segments = (200_003, 1, 4097)
    d = sum(segments)
    cpu, gpu = build(name, d, segments, **settings), build(name, d, segments, **settings)
    rng = np.random.default_rng(1)
    x_cpu = rng.standard_normal(d).astype(np.float32)
    x_gpu = cupy.asarray(x_cpu)
    for step in range(4):
        g = rng.standard_normal(d).astype(np.float32)
        a = uplink_buffer(cpu, 1)
        host = uplink_buffer(gpu, 1)
        b = StagedMessage(host, cupy.zeros(host.padded_body.shape, np.uint8))
        a.begin(step)
        b.begin(step)
        if name == "ef-sgd":  # step-ahead: the model at x - e for the backward pass, and back
            for alg, x in ((cpu, x_cpu), (gpu, x_gpu)):
                alg.before_gradient(context(alg, 1, step, x))
                alg.after_gradient(context(alg, 1, step, x))
        cpu.worker_step(context(cpu, 1, step, x_cpu), g.copy(), a)
        gpu.worker_step(context(gpu, 1, step, x_gpu), cupy.asarray(g), b)
        n = a.header.body_length
        assert b.header == a.header
        # What the exchange copies to the host before Gatherv: the device twin's body.
        assert b.padded_body[:n].get().tobytes() == a.padded_body[:n].tobytes()
        if getattr(cpu, "residual", None) is not None:
            assert cpu.residual.tobytes() == gpu.residual.get().tobytes()
        if name in ("ef-sgd", "terngrad"):  # the update from a downlink: x - C(a), SGD on a
            mean = rng.standard_normal(d).astype(np.float32)
            cpu.apply(context(cpu, 1, step, x_cpu), mean)
            gpu.apply(context(gpu, 1, step, x_gpu), mean)
            assert x_cpu.tobytes() == x_gpu.get().tobytes()


def test_a_steady_state_step_takes_no_new_device_memory():
    segments = (1_000_003,)
    d = sum(segments)
    alg = build("s3gd-mv", d, segments)
    pool = cupy.get_default_memory_pool()
    rng = np.random.default_rng(2)
    grads = [cupy.asarray(rng.standard_normal(d).astype(np.float32)) for _ in range(6)]
    totals = []
    for step, g in enumerate(grads):
        msg = uplink_buffer(alg, 1)
        msg.begin(step)
        alg.worker_step(context(alg, 1, step), g, msg)
        cupy.cuda.get_current_stream().synchronize()
        totals.append(pool.total_bytes())
    assert totals[2:] == [totals[2]] * (len(totals) - 2), totals


@pytest.mark.parametrize("n", [1, 4097, 1_000_003])
def test_running_sums_add_in_index_order_as_the_cpu_path(n):
    from hpcgrad.kernels.device_quantize import running_sums
    values = (np.random.default_rng(n).standard_normal(n) * 1e3).astype(np.float32)
    assert running_sums(cupy.asarray(values)) == running_sums(values)


@pytest.mark.parametrize("name,settings", [("terngrad", {}), ("ef-sgd", {"compressor": "topk"})])
def test_state_restored_on_the_host_moves_to_the_device_on_first_use(name, settings):
    # A checkpoint restores the residual and the momentum buffer as NumPy arrays.
    segments = (4097, 3)
    d = sum(segments)
    cpu, gpu = build(name, d, segments, **settings), build(name, d, segments, **settings)
    rng = np.random.default_rng(3)
    state = rng.standard_normal(d).astype(np.float32)
    for alg in (cpu, gpu):
        alg.sgd.buffer = state.copy()
        if name == "ef-sgd":
            alg.residual = state.copy()
    x_cpu = rng.standard_normal(d).astype(np.float32)
    x_gpu = cupy.asarray(x_cpu)
    g = rng.standard_normal(d).astype(np.float32)
    a, host = uplink_buffer(cpu, 1), uplink_buffer(gpu, 1)
    b = StagedMessage(host, cupy.zeros(host.padded_body.shape, np.uint8))
    a.begin(0)
    b.begin(0)
    cpu.worker_step(context(cpu, 1, 0, x_cpu), g.copy(), a)
    gpu.worker_step(context(gpu, 1, 0, x_gpu), cupy.asarray(g), b)
    n = a.header.body_length
    assert b.padded_body[:n].get().tobytes() == a.padded_body[:n].tobytes()
    cpu.apply(context(cpu, 1, 0, x_cpu), g)
    gpu.apply(context(gpu, 1, 0, x_gpu), g)
    assert x_cpu.tobytes() == x_gpu.get().tobytes()
    assert isinstance(gpu.sgd.buffer, cupy.ndarray)
    assert cpu.sgd.buffer.tobytes() == gpu.sgd.buffer.get().tobytes()
