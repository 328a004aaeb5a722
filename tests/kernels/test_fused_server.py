"""The server's fused decode-and-average kernels (hpcgrad/kernels/fused_server.py) against
the worker-by-worker path they replace, bit for bit: odd lengths, several tensors, zeros of
both signs, M = 1..15 workers, bodies built by the real compressors in a real receive buffer."""

from types import SimpleNamespace

import numpy as np
import pytest

from hpcgrad.algorithms.step import Shard, StepContext, decode_into_mean, decode_into_sum
from hpcgrad.comm.transport import Uplinks
from hpcgrad.compression.compressors import Identity, QSGDCompressor, ScaledSign
from hpcgrad.errors import WireFormatError
from hpcgrad.kernels import fused_server
from hpcgrad.wire import HEADER_SIZE, Header, MessageBuffer, read_header
from hpcgrad.wire.codecs import SCALED_SIGN

WORKERS = range(1, 16)
#: Tensor sizes: one coordinate, odd lengths, a word boundary +-1, and several tensors.
SHAPES = [(1,), (7,), (63, 1, 65), (1001,), (3, 0, 200, 17)]


def gradients(rng, m, d):
    """M float32 gradients with exact zeros of both signs and values of mixed scale."""
    g = (rng.standard_normal((m, d)) * 10.0 ** rng.integers(-6, 3, (m, d))).astype(np.float32)
    g[rng.random((m, d)) < 0.1] = 0.0
    g[rng.random((m, d)) < 0.05] = -0.0
    return g


def receive(compressor, grads, step=5):
    """Every worker's ``compress`` into a message, placed in a real receive buffer as the
    transport would; returns the buffer."""
    m, d = grads.shape
    shard = Shard.whole(compressor.segments)
    capacity = max(c.max_body_length(d) for c in compressor.codecs())
    up = Uplinks(m + 1, HEADER_SIZE + capacity)
    for rank in range(1, m + 1):
        msg = MessageBuffer(Header(compressor.codec.id, d, capacity, step, rank),
                            variable=compressor.variable_length)
        msg.begin(step)
        compressor.compress(StepContext(rank, m, shard, step=step), grads[rank - 1], msg)
        up.raw[rank * up.slot: rank * up.slot + msg.length] = msg.wire
        up.accept(rank, read_header(msg.wire))
    return up


def reference_mean(compressor, up):
    out = np.full(compressor.count, np.nan, np.float32)
    decode_into_sum(up, compressor.decompress, out)
    out /= np.float32(up.workers)
    return out


def make(kind, shape, seed=3):
    config = SimpleNamespace(seed=seed, bits=4)
    offsets = np.cumsum([0, *shape]).astype(np.int64)
    if kind == "identity":
        return Identity(config, shape, offsets)
    if kind == "scaled-sign":
        return ScaledSign(config, shape, offsets)
    bits = int(kind.split(":")[1])
    return QSGDCompressor(config, shape, offsets, bits=bits)


KINDS = ["identity", "scaled-sign", "qsgd:2", "qsgd:3", "qsgd:4", "qsgd:7", "qsgd:8",
         "qsgd:11", "qsgd:16"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_mean_is_the_worker_by_worker_mean_bit_for_bit(kind, shape):
    rng = np.random.default_rng(sum(shape) + len(kind))
    for m in WORKERS:
        compressor = make(kind, shape)
        grads = gradients(rng, m, sum(shape))
        up = receive(compressor, grads)
        want = reference_mean(compressor, up)
        got = np.full(compressor.count, np.nan, np.float32)
        assert compressor.decompress_mean(up, got, np.float32(m)), f"{kind}: no fused path"
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32),
                                      err_msg=f"{kind}, M = {m}, tensors {shape}")


@pytest.mark.parametrize("kind", ["scaled-sign", "qsgd:4"])
def test_all_zero_gradients(kind):
    compressor = make(kind, (5, 64))
    for m in (1, 4, 15):
        up = receive(compressor, np.zeros((m, 69), np.float32))
        got = np.full(69, np.nan, np.float32)
        assert compressor.decompress_mean(up, got, np.float32(m))
        want = reference_mean(compressor, up)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def old_dense_mean(values, m):
    """fp32-ps / fp16-ps's server before the fused kernel: copy, M - 1 adds, a division."""
    mean = np.zeros(values.shape[1], np.float32)
    with np.errstate(invalid="ignore"):  # inf + -inf: NaN, as in the kernel
        np.copyto(mean, values[0])
        for row in values[1:]:
            np.add(mean, row, out=mean)
        mean /= np.float32(m)
    return mean


@pytest.mark.parametrize("d", [1, 7, 64, 1001])
def test_dense_means_are_the_numpy_loop_bit_for_bit(d):
    rng = np.random.default_rng(d)
    for m in WORKERS:
        fp32 = gradients(rng, m, d)
        out = np.full(d, np.nan, np.float32)
        fused_server.fp32_mean(fp32, out, np.float32(m))
        np.testing.assert_array_equal(out.view(np.uint32), old_dense_mean(fp32, m).view(np.uint32))
        # every binary16 value but NaN can occur: subnormals, the largest, +-inf
        bits = rng.integers(0, 1 << 16, (m, d), dtype=np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xFC00  # an inf, not a NaN
        fused_server.fp16_mean(bits, out, np.float32(m))
        np.testing.assert_array_equal(out.view(np.uint32),
                                      old_dense_mean(bits.view(np.float16), m).view(np.uint32))


def test_every_binary16_value_widens_as_numpy_widens_it():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.zeros(every.size, np.float32)
    fused_server.fp16_mean(every[None, :], out, np.float32(1))  # one worker: the value itself
    want = every.view(np.float16).astype(np.float32)
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(out[finite].view(np.uint32), want[finite].view(np.uint32))
    assert np.isnan(out[~finite]).all() and \
        (np.signbit(out[~finite]) == np.signbit(want[~finite])).all()


def corrupt_qsgd(up, worker, nseg):
    """Set the sign bit of a zero level in ``worker``'s first fields (4 bits: a nibble)."""
    fields = up.padded_body(worker)[4 * nseg:]
    position = int(np.flatnonzero(((fields & 0x0F) == 0))[0])
    fields[position] |= 0x08


@pytest.mark.parametrize("bad", [[0], [2], [1, 3]])
def test_a_corrupt_body_raises_what_the_worker_by_worker_path_raises(bad):
    shape = (40, 23)
    compressor = make("qsgd:4", shape)
    grads = gradients(np.random.default_rng(1), 4, 63)
    grads[:, ::3] = 0  # zero levels to corrupt
    up = receive(compressor, grads)
    for w in bad:
        corrupt_qsgd(up, w, len(shape))
    with pytest.raises(WireFormatError) as want:
        reference_mean(compressor, up)
    assert f"rank {bad[0] + 1}" in str(want.value)
    out = np.zeros(63, np.float32)
    assert not compressor.decompress_mean(up, out, np.float32(4))
    with pytest.raises(WireFormatError) as got:
        decode_into_mean(up, compressor, out)
    assert str(got.value) == str(want.value)


def test_a_bad_scale_raises_what_the_worker_by_worker_path_raises():
    compressor = make("scaled-sign", (70,))
    up = receive(compressor, gradients(np.random.default_rng(2), 3, 70))
    body = up.padded_body(1)
    SCALED_SIGN.write_scale(body, 70, np.float32(-1))
    with pytest.raises(WireFormatError, match="rank 2 .* scale -1.0") as got:
        decode_into_mean(up, compressor, np.zeros(70, np.float32))
    with pytest.raises(WireFormatError) as want:
        reference_mean(compressor, up)
    assert str(got.value) == str(want.value)
