"""The device-side worker steps and updates (hpcgrad/compression/on_device.py), run with NumPy
arrays, against the CPU path byte for byte: for s3gd-mv, topk, qsgd, dq-sgd, terngrad and ef-sgd
(every compressor and feedback), over several steps (so that residuals, momentum and the
previous union / aggregate matter), every uplink message, the parameters after each update,
the residuals and the momentum buffers are identical.  A GPU worker runs the same
code with CuPy arrays (tests/gpu/ on a machine with a GPU)."""

import numpy as np
import pytest

from hpcgrad.algorithms import create
from hpcgrad.training.config import TrainConfig
from without_mpi import context, downlink_buffer, receive, uplink_buffer
from hpcgrad.comm.transport import Uplinks
from hpcgrad.wire import HEADER_SIZE


def build(name, d, workers, segments, **settings):
    cfg = TrainConfig(algorithm=name, **settings).resolved()
    return create(cfg, d, workers, segments)


def gradient(rng, d, step, kind):
    g = rng.standard_normal(d).astype(np.float32)
    if kind == "ties":  # few distinct magnitudes and many exact zeros
        g = (rng.integers(-2, 3, d) * np.float32(0.25)).astype(np.float32)
    if step == 1:
        g[: d // 3] = 0
    return g


def run_both(name, segments, steps=4, workers=3, kind="normal", seed=0, **settings):
    """``steps`` steps of ``workers`` CPU workers and their device-path twins; asserts equal
    bytes, parameters and residuals at every step."""
    d = sum(segments)
    make = lambda: build(name, d, workers, list(segments), seed=seed, **settings)  # noqa: E731
    cpu, dev = [make() for _ in range(workers)], [make() for _ in range(workers)]
    server = make()
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(d).astype(np.float32)
    params = {"cpu": [x0.copy() for _ in range(workers)],
              "dev": [x0.copy() for _ in range(workers)]}
    capacity = max(c.max_body_length(d) for c in server.uplink_codecs())
    for step in range(steps):
        up = Uplinks(workers + 1, HEADER_SIZE + capacity)
        for w in range(workers):
            g = gradient(rng, d, step, kind)
            rank = w + 1
            a, b = uplink_buffer(cpu[w], rank), uplink_buffer(dev[w], rank)
            a.begin(step)
            b.begin(step)
            ctx_cpu = context(cpu[w], rank, step, params["cpu"][w])
            ctx_dev = context(dev[w], rank, step, params["dev"][w])
            if name == "ef-sgd":  # step-ahead moves the model to x - e for the backward pass
                cpu[w].before_gradient(ctx_cpu)
                dev[w].before_gradient(ctx_dev)
                assert params["cpu"][w].tobytes() == params["dev"][w].tobytes()
                cpu[w].after_gradient(ctx_cpu)
                dev[w].after_gradient(ctx_dev)
            cpu[w].worker_step(ctx_cpu, g.copy(), a)
            dev[w].device_step(*_step_args(name, dev[w], rank, step, params["dev"][w], g.copy(),
                                           b))
            assert a.wire.tobytes() == b.wire.tobytes(), f"worker {w} step {step}"
            receive(up, rank, a)
        down = downlink_buffer(server)
        down.begin(step)
        server.server_step(context(server, 0, step), up, down)
        server.decode(context(server, 0, step), down)  # every rank decodes (dq-sgd's width)
        for w in range(workers):
            ctx = context(cpu[w], w + 1, step, params["cpu"][w])
            cpu[w].apply(ctx, cpu[w].decode(ctx, down))
            ctx = context(dev[w], w + 1, step, params["dev"][w])
            decoded = dev[w].decode(ctx, down)
            if name == "s3gd-mv":
                dev[w].device_step.apply(dev[w], params["dev"][w], decoded)
            elif name in ("qsgd", "dq-sgd", "terngrad"):
                dev[w].device_step.apply(dev[w].sgd, params["dev"][w], decoded)
            elif name == "ef-sgd":
                dev[w].device_step.apply(params["dev"][w], decoded)
            else:
                dev[w].device_step.apply(params["dev"][w], dev[w].union_nnz)
            assert params["cpu"][w].tobytes() == params["dev"][w].tobytes()
            if getattr(cpu[w], "residual", None) is not None:
                assert cpu[w].residual.tobytes() == dev[w].residual.tobytes()
            if getattr(cpu[w], "sgd", None) is not None and cpu[w].sgd.buffer is not None:
                assert cpu[w].sgd.buffer.tobytes() == dev[w].sgd.buffer.tobytes()
    return server


def _step_args(name, alg, rank, step, params, grad, message):
    if name == "s3gd-mv":
        return alg.memory, grad, message
    return context(alg, rank, step, params), grad, message


SEGMENTS = [(37,), (101, 3, 250), (5000, 1, 333)]


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("settings", [
    {}, {"residual": 0.0}, {"residual": 0.5}, {"selection": "threshold"},
    {"momentum": 0.9}, {"weight_decay": 0.01}, {"sparsity": 0.3, "weight_decay": 0.01},
    {"k_per_worker": "auto", "votes_per_coordinate": 0.5}])
def test_s3gd_mv_device_step_sends_the_cpu_bytes(segments, settings):
    for kind, seed in (("normal", 0), ("ties", 1)):
        run_both("s3gd-mv", segments, kind=kind, seed=seed, **settings)


@pytest.mark.parametrize("segments", SEGMENTS)
@pytest.mark.parametrize("settings", [
    {}, {"topk_values": "fp16"}, {"topk_selection": "union-boost"},
    {"topk_selection": "union-boost", "union_boost": 3.0},
    {"topk_selection": "aggregate-hint", "aggregate_hint": 0.5},
    {"topk_selection": "shared-random"}, {"topk_selection": "shared-random", "unbiased": True},
    {"topk_selection": "leader"}, {"weight_decay": 0.01, "sparsity": 0.2}])
def test_topk_device_step_sends_the_cpu_bytes(segments, settings):
    for kind, seed in (("normal", 0), ("ties", 1)):
        run_both("topk", segments, kind=kind, seed=seed, **settings)


def test_threshold_selection_with_a_large_tensor_samples_as_the_cpu_path_does():
    server = run_both("s3gd-mv", (70001, 9), steps=3, selection="threshold", sparsity=0.01)
    assert server.step_stats["nnz_up"].min() > 0


@pytest.mark.parametrize("segments", SEGMENTS + [(1,), (0, 5)])
@pytest.mark.parametrize("name,settings", [
    ("qsgd", {}), ("qsgd", {"bits": 2}), ("qsgd", {"bits": 3, "quantize_downlink": True}),
    ("qsgd", {"bits": 16}), ("qsgd", {"bits": 8, "weight_decay": 0.01}),
    ("dq-sgd", {}), ("dq-sgd", {"dq_window": 2, "min_bits": 3, "max_bits": 6})])
def test_qsgd_device_step_quantizes_with_the_cpu_coins(segments, name, settings):
    for kind, seed in (("normal", 0), ("ties", 1)):
        run_both(name, segments, kind=kind, seed=seed, **settings)


def test_qsgd_device_step_refuses_a_norm_beyond_float32_as_the_cpu_path_does():
    from hpcgrad.errors import NonFiniteError
    alg = build("qsgd", 4, 2, [4])
    msg = uplink_buffer(alg, 1)
    msg.begin(0)
    big = np.full(4, 3e38, np.float32)
    with pytest.raises(NonFiniteError, match="norm of tensor 0 is not finite"):
        alg.device_step(context(alg, 1, 0), big, msg)
    with pytest.raises(NonFiniteError, match="norm of tensor 0 is not finite"):
        alg.worker_step(context(alg, 1, 0), big, msg)


EF_SETTINGS = [{"feedback": "ef"}, {"feedback": "none"},
               {"feedback": "step-ahead", "weight_decay": 0.01},
               {"feedback": "step-ahead", "momentum": 0.0},
               {"feedback": "ef", "weight_decay": 0.01, "error_averaging": 2}]


@pytest.mark.parametrize("segments", SEGMENTS + [(1,), (64,), (65, 63)])
@pytest.mark.parametrize("compressor", ["scaled-sign", "topk", "randomk", "qsgd", "identity"])
@pytest.mark.parametrize("settings", EF_SETTINGS)
def test_ef_sgd_device_step_sends_the_cpu_bytes(segments, compressor, settings):
    extra = {"sparsity": 0.2} if compressor in ("topk", "randomk") else {}
    if compressor in ("topk", "randomk") and sum(segments) < 2:
        pytest.skip("K < d needs two coordinates")
    for kind, seed in (("normal", 0), ("ties", 1)):
        run_both("ef-sgd", segments, kind=kind, seed=seed, compressor=compressor,
                 **extra, **settings)


def test_ef_sgd_server_feedback_leaves_the_device_step_unchanged():
    # --server-feedback is the server's (on the host): the workers' bytes are the same.
    run_both("ef-sgd", (101, 3, 250), compressor="topk", sparsity=0.1, server_feedback=True)
    run_both("ef-sgd", (101, 3, 250), compressor="scaled-sign", server_feedback=True)


@pytest.mark.parametrize("segments", SEGMENTS + [(1,), (0, 5), (4,), (7, 1, 9)])
@pytest.mark.parametrize("settings", [{}, {"terngrad_clip": 0.0}, {"terngrad_clip": 1.0},
                                      {"weight_decay": 0.01, "momentum": 0.0}])
def test_terngrad_device_step_ternarizes_with_the_cpu_coins(segments, settings):
    for kind, seed in (("normal", 0), ("ties", 1)):
        run_both("terngrad", segments, kind=kind, seed=seed, **settings)


def test_ef_sgd_device_step_refuses_a_non_finite_scale_as_the_cpu_path_does():
    from hpcgrad.errors import WireFormatError
    for path in ("worker_step", "device_step"):
        alg = build("ef-sgd", 4, 2, [4], compressor="scaled-sign", lr=1.0, momentum=0.0)
        msg = uplink_buffer(alg, 1)
        msg.begin(0)
        with pytest.raises(WireFormatError, match="scaled-sign scale inf is not a finite"):
            getattr(alg, path)(context(alg, 1, 0), np.array([1, np.inf, 0, -1], np.float32), msg)


def test_terngrad_device_step_refuses_a_non_finite_gradient_as_the_cpu_path_does():
    from hpcgrad.errors import NonFiniteError
    for path in ("worker_step", "device_step"):
        alg = build("terngrad", 6, 2, [3, 3])
        msg = uplink_buffer(alg, 1)
        msg.begin(0)
        g = np.ones(6, np.float32)
        g[4] = np.nan
        with pytest.raises(NonFiniteError, match="tensor 1 of rank 1's gradient at step 0"):
            getattr(alg, path)(context(alg, 1, 0), g, msg)
