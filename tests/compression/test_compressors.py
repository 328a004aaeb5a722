"""hpcgrad/compression/compressors.py: each compressor ``C`` (identity, scaled-sign, topk,
randomk, qsgd; and what the topk / s3gd-mv algorithms build on: topk's fp16 values, scores
and shared positions, SparseValues' membership bitmap, TopKSigns, SparseSigns with base3)
against an independent NumPy reference written here, through real message buffers:
compress -> body -> decompress.  Also: ``accumulate=True`` adds, bodies depend only
on (values, seed, step, sender), and corrupt bodies are refused with the receiver's name
for the message.

How ef-sgd composes these with its residual is tested in tests/algorithms/test_ef_sgd.py.
"""

import math

import numpy as np
import pytest

from hpcgrad.algorithms.step import Shard, StepContext
from hpcgrad.compression.compressors import (COMPRESSORS, SparseSigns, SparseValues,
                                             TopKCompressor, TopKSigns, create)
from hpcgrad.errors import WireFormatError
from hpcgrad.training.config import TrainConfig
from hpcgrad.wire import HEADER_SIZE, Header, MessageBuffer, codecs, read_header

SEGMENTS = [300, 20, 180, 7]  # 507 coordinates: not a multiple of 8, a tensor of 7
OFFSETS = np.array([0, 300, 320, 500, 507], dtype=np.int64)
D = sum(SEGMENTS)
WHAT = "uplink message from rank 2 at step 5"


def compressor(name, **settings):
    # Each compressor reads only its own settings (others are refused, training/config.py).
    own = {"topk": {"sparsity": 0.05}, "randomk": {"sparsity": 0.05}, "qsgd": {"bits": 4}}
    settings = {**own.get(name, {}), **settings}
    config = TrainConfig(algorithm="ef-sgd", compressor=name, **settings).resolved()
    return create(config, SEGMENTS, OFFSETS)


def message_for(comp, sender=1):
    """A message buffer as the exchange allocates it: capacity for the longest body."""
    capacity = max(c.max_body_length(D) for c in comp.codecs())
    return MessageBuffer(Header(comp.codecs()[0].id, D, capacity, 0, sender), variable=True)


def send(comp, values, message, step, sender):
    """``comp.compress`` as a worker's step runs it: the message begun for ``step``, the step
    context of rank ``sender``; checks that the header returned is the one on the wire."""
    message.begin(step)
    ctx = StepContext(sender, max(sender, 4), Shard.whole(SEGMENTS), step=step)
    sent = comp.compress(ctx, values, message)
    assert sent == read_header(message.wire)
    return sent


def roundtrip(comp, values, step=0, sender=1, message=None):
    """``C(values)`` through the wire: (decompressed vector, message)."""
    message = message or message_for(comp, sender)
    send(comp, values, message, step, sender)
    out = np.full(D, np.nan, dtype=np.float32)  # decompress must write every coordinate
    comp.decompress(message.padded_body, read_header(message.wire), out, what=WHAT)
    return out, message


def gradient(seed=0, ties=False):
    """A gradient with tensors of different scales (so per-tensor and whole-model choices
    differ), no zeros; ``ties``: few distinct magnitudes, so top-K meets ties."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(D) * np.repeat([1.0, 10.0, 0.1, 3.0], SEGMENTS)
    if ties:
        v = np.round(v, 1) + np.where(v < 0, -0.1, 0.1)  # |v| >= 0.1: still no zeros
    return v.astype(np.float32)


def segments_of(v):
    return [v[OFFSETS[i]:OFFSETS[i + 1]] for i in range(len(SEGMENTS))]


def k_of(n, sparsity=0.05):
    return max(1, math.ceil(sparsity * n))


# ------------------------------------------------------------------ references (NumPy)


def topk_reference(v, sparsity=0.05):
    """Per tensor, the K_l entries of largest |v|, ties in index order; the rest zero."""
    out = np.zeros_like(v)
    for o, n in zip(OFFSETS, SEGMENTS):
        part = v[o:o + n]
        order = np.lexsort((np.arange(n), -np.abs(part.astype(np.float64))))
        keep = order[:k_of(n, sparsity)]
        keep = keep[part[keep] != 0]  # sign(0) = 0 sends nothing
        out[o + keep] = part[keep]
    return out


def scaled_sign_reference(v):
    """``(|v|_1 / d) * sign(v)`` over the whole model, sign(0) = +1, scale rounded to fp32."""
    scale = np.float32(math.fsum(abs(float(x)) for x in v) / v.size)
    return np.where(v < 0, -scale, scale).astype(np.float32), scale


def qsgd_fields(body, bits):
    """Independent reading of a qsgd body (docs/wire-format.md §4.8): per tensor an fp32
    norm, then per tensor a byte-aligned LSB-first section of b-bit fields, bits 0..b-2 the
    level, bit b-1 the sign.  Returns (norms, levels, negative, padding bits of each
    section)."""
    norms = body[: 4 * len(SEGMENTS)].view("<f4").copy()
    start = 4 * len(SEGMENTS)
    levels, negative, padding = [], [], []
    for n in SEGMENTS:
        nbytes = -(-bits * n // 8)
        bitstream = np.unpackbits(body[start:start + nbytes], bitorder="little")
        fields = bitstream[: bits * n].reshape(n, bits).astype(np.int64)
        levels.append(fields[:, : bits - 1] @ (1 << np.arange(bits - 1)))
        negative.append(fields[:, bits - 1].astype(bool))
        padding.append(bitstream[bits * n:])
        start += nbytes
    assert start == body.size
    return norms, np.concatenate(levels), np.concatenate(negative), padding


def qsgd_values(norms, levels, negative, bits):
    """``sign * l * (r / s)`` evaluated in float32 as the format defines it."""
    s = np.float32((1 << (bits - 1)) - 1)
    scale = np.repeat(norms / s, SEGMENTS).astype(np.float32)
    values = levels.astype(np.float32) * scale
    return np.where(negative, -values, values).astype(np.float32)


# ------------------------------------------------------------------------ each compressor


def test_identity_sends_the_vector_itself():
    comp = compressor("identity")
    v = gradient(1)
    out, message = roundtrip(comp, v)
    assert read_header(message.wire) == Header(codecs.FP32.id, D, 4 * D, 0, 1)
    assert message.body.tobytes() == v.astype("<f4").tobytes()
    np.testing.assert_array_equal(out, v)


def test_scaled_sign_is_the_mean_magnitude_of_the_whole_model_times_the_sign():
    comp = compressor("scaled-sign")
    v = gradient(2)
    v[[0, 301, 506]] = 0  # sign(0) = +1
    out, message = roundtrip(comp, v)
    expected, scale = scaled_sign_reference(v)
    header = read_header(message.wire)
    assert (header.codec, header.body_length) == (codecs.SCALED_SIGN.id, (D + 7) // 8 + 4)
    sent_scale = message.body[-4:].view("<f4")[0]
    np.testing.assert_allclose(sent_scale, scale, rtol=1e-6)  # float64 sums, two orders
    np.testing.assert_array_equal(np.unpackbits(message.body[:-4], bitorder="little")[:D],
                                  v < 0)  # 1 = negative, LSB first
    assert not np.unpackbits(message.body[:-4], bitorder="little")[D:].any()  # padding bits
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(np.abs(out), sent_scale)  # one magnitude for every entry


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("sparsity", [0.05, 0.3])
def test_topk_keeps_the_largest_magnitudes_of_each_tensor(ties, sparsity):
    comp = compressor("topk", sparsity=sparsity)
    v = gradient(3, ties=ties)
    out, message = roundtrip(comp, v)
    expected = topk_reference(v, sparsity)
    np.testing.assert_array_equal(out, expected)
    assert np.count_nonzero(out) == sum(k_of(n, sparsity) for n in SEGMENTS)
    header = read_header(message.wire)
    assert header.codec == codecs.SPARSE_VALUES.id
    # the body read by the codec alone, not by the compressor that wrote it
    np.testing.assert_array_equal(
        codecs.SPARSE_VALUES.decode(message.body, D, header.flags), expected)


def test_topk_sends_no_zeros():
    comp = compressor("topk", sparsity=0.05)
    v = gradient(4)
    v[320:500] = 0  # a whole tensor of zeros: nothing of it is sent
    v[500:507] = [0, 0, 0, 0, 0, 0, 2]
    out, message = roundtrip(comp, v)
    np.testing.assert_array_equal(out, topk_reference(v))
    _, values = codecs.decode_message(message.wire.tobytes())
    assert np.count_nonzero(values) == k_of(300) + k_of(20) + 1


def test_randomk_sends_k_scaled_entries_per_tensor_chosen_by_seed_step_and_sender():
    comp = compressor("randomk", sparsity=0.05, seed=9)
    v = gradient(5)
    out, message = roundtrip(comp, v, step=3, sender=2)
    for part_out, part_v, n in zip(segments_of(out), segments_of(v), SEGMENTS):
        k = k_of(n)
        chosen = np.flatnonzero(part_out)
        assert chosen.size == k
        np.testing.assert_array_equal(part_out[chosen],
                                      part_v[chosen] * np.float32(n / k))  # unbiased scaling
    again, _ = roundtrip(compressor("randomk", sparsity=0.05, seed=9), v, step=3, sender=2)
    np.testing.assert_array_equal(again, out)  # a fresh instance: the same body
    for other in (dict(step=4, sender=2), dict(step=3, sender=1)):
        moved, _ = roundtrip(comp, v, **other)
        assert not np.array_equal(moved != 0, out != 0), other
    reseeded, _ = roundtrip(compressor("randomk", sparsity=0.05, seed=10), v, step=3, sender=2)
    assert not np.array_equal(reseeded != 0, out != 0)


def test_randomk_is_unbiased_and_chooses_every_position_alike():
    """Over many (seed, step) pairs: E[C(v)] = v, and each coordinate of tensor l is chosen
    with probability K_l / n_l.  Bounds are 5 standard deviations (the draws are seeded, so
    the outcome is fixed; a biased scaling or a skewed choice misses by far more)."""
    v = gradient(6)
    seeds, steps = 40, 50
    trials = seeds * steps
    total = np.zeros(D)
    chosen = np.zeros(D)
    for seed in range(seeds):
        comp = compressor("randomk", sparsity=0.1, seed=seed)
        message = message_for(comp)
        for step in range(steps):
            out, _ = roundtrip(comp, v, step=step, message=message)
            total += out
            chosen += out != 0
    p = np.repeat([k_of(n, 0.1) / n for n in SEGMENTS], SEGMENTS)
    sigma = np.abs(v) * np.sqrt((1 / p - 1) / trials)  # std of the mean of v/p w.p. p
    assert np.all(np.abs(total / trials - v) <= 5 * sigma + 1e-6)
    sigma_count = np.sqrt(trials * p * (1 - p))
    assert np.all(np.abs(chosen - trials * p) <= 5 * sigma_count)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_levels_lie_on_the_grid_of_each_tensors_norm(bits):
    comp = compressor("qsgd", bits=bits)
    v = gradient(7)
    v[[5, 310]] = 0
    out, message = roundtrip(comp, v, step=2, sender=3)
    header = read_header(message.wire)
    assert header.codec == codecs.QSGD.id and header.flags == bits
    assert header.body_length == 4 * 4 + sum(-(-bits * n // 8) for n in SEGMENTS)
    norms, levels, negative, padding = qsgd_fields(message.body, bits)
    np.testing.assert_array_equal(out, qsgd_values(norms, levels, negative, bits))
    for r, part in zip(norms, segments_of(v)):  # r: the L2 norm rounded up to float32
        exact = math.sqrt(math.fsum(float(x) ** 2 for x in part))
        assert float(r) >= exact and float(np.nextafter(r, np.float32(0))) < exact
    s = (1 << (bits - 1)) - 1
    x = s * np.abs(v.astype(np.float64)) / np.repeat(norms.astype(np.float64), SEGMENTS)
    assert np.all((levels == np.floor(x)) | (levels == np.floor(x) + 1))
    assert np.all(levels <= s)
    np.testing.assert_array_equal(negative, (levels > 0) & (v < 0))  # no sign on level 0
    assert levels[5] == levels[310] == 0
    assert not any(p.any() for p in padding)


def test_qsgd_is_unbiased():
    """E[C(v)] = v over the coins of many steps: within 5 standard deviations, where one
    coordinate's variance is at most (r/s)^2 / 4 (a biased rounding, always down say, is off
    by up to r/s)."""
    bits, steps = 4, 1000
    comp = compressor("qsgd", bits=bits)
    v = gradient(8)
    message = message_for(comp)
    total = np.zeros(D)
    for step in range(steps):
        out, _ = roundtrip(comp, v, step=step, message=message)
        total += out
    norms = qsgd_fields(message.body, bits)[0]
    sigma = np.repeat(norms.astype(np.float64), SEGMENTS) / ((1 << (bits - 1)) - 1) / 2
    assert np.all(np.abs(total / steps - v) <= 5 * sigma / math.sqrt(steps) + 1e-6)


def test_qsgd_coins_depend_on_seed_step_and_sender_only():
    v = gradient(9)
    first = roundtrip(compressor("qsgd", seed=4), v, step=6, sender=2)[1].wire.tobytes()
    again = roundtrip(compressor("qsgd", seed=4), v, step=6, sender=2)[1].wire.tobytes()
    assert again == first
    for seed, step, sender in ((5, 6, 2), (4, 7, 2), (4, 6, 3)):
        other = roundtrip(compressor("qsgd", seed=seed), v, step=step, sender=sender)[1]
        assert other.body.tobytes() != first[HEADER_SIZE:], (seed, step, sender)


# ------------------------------------- coders of entries the algorithms choose (topk, s3gd-mv)


def plain_config():
    """Settings of no compressor in particular: these take their K and options as arguments."""
    return TrainConfig(algorithm="ef-sgd", compressor="identity").resolved()


def ks_of(sparsity=0.05):
    return [k_of(n, sparsity) for n in SEGMENTS]


def fp16_reference(x):
    """IEEE binary16 of float32 values, saturating at the largest finite one (65504)."""
    return np.clip(x, -65504, 65504).astype(np.float16).astype(np.float32)


def base3_reference(body, count):
    """Independent reading of a base3 body (docs/wire-format.md): byte = sum t_i 3^i over five
    trits, trit 1 = +1, 2 = -1."""
    trits = (body[:, None].astype(np.int64) // 3 ** np.arange(5)) % 3
    return np.select([trits == 1, trits == 2], [1.0, -1.0], 0.0).ravel()[:count]


def test_topk_with_fp16_values_sends_them_rounded_and_saturated():
    comp = TopKCompressor(plain_config(), SEGMENTS, OFFSETS, ks_of(), fp16=True)
    v = gradient(20)
    v[[0, 301]] = [1e6, -7e4]  # past fp16's range: in each tensor's top K
    out, message = roundtrip(comp, v)
    expected = topk_reference(v)
    expected[expected != 0] = fp16_reference(expected[expected != 0])
    np.testing.assert_array_equal(out, expected)
    assert out[0] == 65504 and out[301] == -65504
    header = read_header(message.wire)
    assert header.flags & codecs.SparseValuesCodec.FP16
    fp32_header = read_header(roundtrip(TopKCompressor(plain_config(), SEGMENTS, OFFSETS,
                                                       ks_of()), v)[1].wire)
    assert fp32_header.body_length - header.body_length == 2 * comp.nnz  # 2 bytes a value
    # what a residual subtracts: the values as sent, at the positions sent
    np.testing.assert_array_equal(comp.positions[:comp.nnz], np.flatnonzero(expected))
    np.testing.assert_array_equal(comp.values[:comp.nnz], expected[expected != 0])


def test_topk_selects_by_the_scores_given_and_sends_the_values():
    comp = TopKCompressor(plain_config(), SEGMENTS, OFFSETS, ks_of())
    v = gradient(21)
    scores = gradient(22)  # a different vector: the choice must follow it, not v
    message = message_for(comp)
    message.begin(0)
    comp.compress(StepContext(1, 4, Shard.whole(SEGMENTS)), v, message, scores=scores)
    chosen = topk_reference(scores) != 0
    expected = np.where(chosen, v, np.float32(0))
    assert not np.array_equal(chosen, topk_reference(v) != 0)  # the test can tell them apart
    np.testing.assert_array_equal(codecs.SPARSE_VALUES.decode(message.body, D,
                                                              message.header.flags), expected)


@pytest.mark.parametrize("unbiased", [False, True])
def test_topk_sends_at_positions_the_caller_wrote(unbiased):
    """shared-random / leader: the caller writes positions, the compressor sends values there
    (``unbiased``: tensor l's times numel_l / K_l)."""
    comp = TopKCompressor(plain_config(), SEGMENTS, OFFSETS, ks_of())
    rng = np.random.default_rng(23)
    chosen = np.concatenate([np.sort(rng.choice(n, k, replace=False)) + o
                             for o, n, k in zip(OFFSETS, SEGMENTS, ks_of())])
    comp.positions[:chosen.size] = chosen
    v = gradient(24)
    message = message_for(comp)
    message.begin(0)
    comp.send_at(v, chosen.size, message, unbiased=unbiased)
    expected = np.zeros(D, np.float32)
    for o, n, k in zip(OFFSETS, SEGMENTS, ks_of()):
        mine = chosen[(chosen >= o) & (chosen < o + n)]
        expected[mine] = v[mine] * (np.float32(n / k) if unbiased else np.float32(1))
    np.testing.assert_array_equal(codecs.SPARSE_VALUES.decode(message.body, D,
                                                              message.header.flags), expected)


def test_sparse_values_carry_a_membership_bitmap_and_read_into_rows():
    capacity = 60
    comp = SparseValues(plain_config(), SEGMENTS, OFFSETS, capacity)
    rng = np.random.default_rng(25)
    positions = np.sort(rng.choice(D, 40, replace=False)).astype(np.int64)
    values = rng.standard_normal(40).astype(np.float32)
    marked = (rng.random(40) < 0.3).astype(np.uint8)
    message = MessageBuffer(Header(codecs.SPARSE_VALUES.id, D,
                                   codecs.SPARSE_VALUES.max_body_length(D), 0, 0), variable=True)
    message.begin(3)
    header = comp.write_entries(positions, values, 40, message, marked)
    assert header.flags & codecs.SparseValuesCodec.MARKED and not header.flags & 0x10
    bitmap = message.body[-((40 + 7) // 8):]  # the body's last bytes, LSB first
    np.testing.assert_array_equal(np.unpackbits(bitmap, bitorder="little")[:40], marked)
    assert not np.unpackbits(bitmap, bitorder="little")[40:].any()
    got_pos, got_val = np.zeros(capacity, np.int64), np.zeros(capacity, np.float32)
    got_marked = np.zeros(capacity, np.uint8)
    assert comp.decode_entries(message.body, header, got_pos, got_val, got_marked,
                               what=WHAT) == 40
    np.testing.assert_array_equal(got_pos[:40], positions)
    np.testing.assert_array_equal(got_val[:40], values)
    np.testing.assert_array_equal(got_marked[:40], marked)
    with pytest.raises(WireFormatError, match="membership bitmap this receiver does not"):
        comp.decode_entries(message.body, header, got_pos, got_val, what=WHAT)
    small = np.zeros(39, np.int64), np.zeros(39, np.float32)  # fewer rows than entries
    with pytest.raises(WireFormatError, match="more entries than any message"):
        comp.decode_entries(message.body, header, *small, np.zeros(39, np.uint8), what=WHAT)


@pytest.mark.parametrize("selection", ["exact", "threshold"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_topk_signs_sends_the_signs_of_the_largest_magnitudes(selection, ties):
    comp = TopKSigns(plain_config(), SEGMENTS, OFFSETS, ks_of(0.1), selection)
    v = gradient(26, ties=ties)
    v[320:330] = 0  # zeros are never sent, even where K asks for more
    out, message = roundtrip(comp, v)
    expected = np.sign(topk_reference(v, 0.1))
    np.testing.assert_array_equal(out, expected)
    header = read_header(message.wire)
    assert header.codec == codecs.SPARSE_SIGN.id
    np.testing.assert_array_equal(codecs.SPARSE_SIGN.decode(message.body, D, header.flags),
                                  expected)
    np.testing.assert_array_equal(comp.positions[:comp.nnz], np.flatnonzero(expected))
    np.testing.assert_array_equal(comp.negative[:comp.nnz], expected[expected != 0] < 0)


@pytest.mark.parametrize("fraction, base3", [(0.05, True), (0.9, False), (0.9, True)])
def test_sparse_signs_send_the_shorter_of_sparse_sign_and_base3(fraction, base3):
    comp = SparseSigns(plain_config(), SEGMENTS, OFFSETS, D, base3=base3)
    rng = np.random.default_rng(27)
    nnz = int(fraction * D)
    positions = np.sort(rng.choice(D, nnz, replace=False)).astype(np.int64)
    negative = (rng.random(nnz) < 0.5).astype(np.uint8)
    dense = np.zeros(D)
    dense[positions] = np.where(negative == 1, -1.0, 1.0)
    capacity = max(c.max_body_length(D) for c in comp.codecs())
    message = MessageBuffer(Header(codecs.SPARSE_SIGN.id, D, capacity, 0, 0), variable=True)
    message.begin(1)
    header = comp.write_entries(positions, negative, nnz, message)
    # base3 takes ceil(d/5) bytes; a near-dense vote as a bitmap and signs takes more
    use_base3 = base3 and fraction > 0.5
    assert header.codec == (codecs.BASE3.id if use_base3 else codecs.SPARSE_SIGN.id)
    if use_base3:
        assert header.body_length == -(-D // 5)
        np.testing.assert_array_equal(base3_reference(message.body, D), dense)
    got_pos, got_neg = np.zeros(D, np.int64), np.zeros(D, np.uint8)
    assert comp.decode_entries(message.body, header, got_pos, got_neg, what=WHAT) == nnz
    np.testing.assert_array_equal(got_pos[:nnz], positions)
    np.testing.assert_array_equal(got_neg[:nnz], negative)
    out = np.full(D, 7, np.float32)
    comp.decompress(message.padded_body, header, out, accumulate=True)
    np.testing.assert_array_equal(out, dense + 7)


def test_topk_signs_refuses_a_codec_it_does_not_send():
    """An uplink of s3gd-mv is sparse-sign only; base3 is the downlink's."""
    down = SparseSigns(plain_config(), SEGMENTS, OFFSETS, D, base3=True)
    message = MessageBuffer(Header(codecs.BASE3.id, D, codecs.BASE3.max_body_length(D), 0, 0),
                            variable=True)
    message.begin(0)
    everything = np.arange(D, dtype=np.int64)
    header = down.write_entries(everything, np.zeros(D, np.uint8), D, message)
    assert header.codec == codecs.BASE3.id
    up = TopKSigns(plain_config(), SEGMENTS, OFFSETS, ks_of())
    with pytest.raises(WireFormatError, match=f"^{WHAT}: codec 6 is not sparse-sign$"):
        up.decode_entries(message.body, header, np.zeros(D, np.int64), np.zeros(D, np.uint8),
                          what=WHAT)


# ------------------------------------------------------------------ every compressor alike

NAMES = sorted(COMPRESSORS)


def test_the_registry_holds_the_five_documented_compressors():
    assert NAMES == ["identity", "qsgd", "randomk", "scaled-sign", "topk"]
    for name, cls in COMPRESSORS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", NAMES)
def test_accumulate_adds_to_what_is_there(name):
    comp = compressor(name)
    v = gradient(10)
    alone, message = roundtrip(comp, v, step=1)
    base = np.random.default_rng(11).standard_normal(D).astype(np.float32)
    out = base.copy()
    comp.decompress(message.padded_body, read_header(message.wire), out, accumulate=True)
    np.testing.assert_array_equal(out, base + alone)


@pytest.mark.parametrize("name", NAMES)
def test_a_reused_message_buffer_carries_nothing_from_the_last_body(name):
    """The exchange reuses one buffer per rank: a body written after a longer one must be
    byte for byte the body a fresh buffer gets."""
    long_v = gradient(12)
    short_v = gradient(13)
    short_v[::2] = 0  # sparse bodies of fewer entries, a smaller scale, ...
    comp = compressor(name)
    message = message_for(comp)
    roundtrip(comp, long_v, step=1, message=message)
    reused, _ = roundtrip(comp, short_v, step=1, message=message)
    fresh, fresh_message = roundtrip(compressor(name), short_v, step=1)
    assert message.wire.tobytes() == fresh_message.wire.tobytes()
    assert not message.raw[message.length:].any()  # the padding past this body is zero
    np.testing.assert_array_equal(reused, fresh)


# --------------------------------------------------------------------- corrupt bodies


def set_flags(flags):
    def tamper(message, header):
        return message.padded_body, Header(header.codec, header.count, header.body_length,
                                           header.step, header.sender, flags)
    return tamper


def set_float(offset_from_end, value):
    """Overwrite the fp32 at ``body_length - offset_from_end`` (the scaled-sign scale)."""
    def tamper(message, header):
        at = header.body_length - offset_from_end
        message.padded_body[at:at + 4] = np.frombuffer(np.float32(value).tobytes(), np.uint8)
        return message.padded_body, header
    return tamper


def set_norm(tensor, value):
    def tamper(message, header):
        message.padded_body[4 * tensor:4 * tensor + 4] = np.frombuffer(
            np.float32(value).tobytes(), np.uint8)
        return message.padded_body, header
    return tamper


def set_bit(byte_from_end, bit):
    def tamper(message, header):
        message.padded_body[header.body_length - byte_from_end] |= np.uint8(1 << bit)
        return message.padded_body, header
    return tamper


def shorten(by):
    def tamper(message, header):
        return message.padded_body, Header(header.codec, header.count,
                                           header.body_length - by, header.step,
                                           header.sender, header.flags)
    return tamper


def sign_on_a_zero_level(message, header):
    """Set the sign bit of the first level-0 field of the first tensor (4-bit fields)."""
    _, levels, _, _ = qsgd_fields(message.body, 4)
    i = int(np.flatnonzero(levels[:300] == 0)[0])
    bit = 4 * i + 3
    message.padded_body[16 + bit // 8] |= np.uint8(1 << (bit % 8))
    return message.padded_body, header


def more_entries_than_k(message, header):
    """A body from a run with ten times the sparsity: more entries than this run's K."""
    wide = compressor("topk", sparsity=0.5)
    big = message_for(wide)
    send(wide, gradient(14), big, 5, 2)
    return big.padded_body, read_header(big.wire)


CORRUPT = [
    ("identity", set_flags(1), "flags 0x1 set; fp32 defines none"),
    ("scaled-sign", set_flags(2), "flags 0x2 set; scaled-sign defines none"),
    ("scaled-sign", set_float(4, np.nan), "scaled-sign scale nan is not a finite number"),
    ("scaled-sign", set_float(4, -1.0), "scaled-sign scale -1.0 is not a finite number >= 0"),
    ("scaled-sign", set_float(4, np.inf), "scaled-sign scale inf is not a finite number"),
    ("scaled-sign", set_bit(5, 7), "padding bits after element 506 are set"),
    ("topk", set_flags(0x80), "sparse-values flags 0x0080 are not valid"),
    ("topk", shorten(1), "sparse-values body"),
    ("topk", more_entries_than_k, "it holds more entries than any message of this run can"),
    ("randomk", set_flags(0x4), "sparse-values flags 0x0004 are not valid"),
    ("randomk", shorten(1), "sparse-values body"),
    ("randomk", more_entries_than_k, "it holds more entries than any message of this run can"),
    ("qsgd", set_flags(3), "header flags 0x0003 (width 3, next 0); expected width 4, next 0"),
    ("qsgd", set_flags(4 | 5 << 8), "header flags 0x0504 (width 4, next 5); expected width 4, next 0"),
    ("qsgd", shorten(1), "body_length 269 does not match qsgd at 4 bits"),
    ("qsgd", set_norm(1, -2.0), "a tensor's norm is negative"),
    ("qsgd", set_norm(2, np.inf), "a tensor's norm is not finite"),
    ("qsgd", sign_on_a_zero_level, "a zero level has its sign bit set"),
    ("qsgd", set_bit(1, 7), "padding bits after a tensor's last field are not zero"),
]


@pytest.mark.parametrize("name, tamper, message", CORRUPT,
                         ids=[f"{c[0]}-{c[2][:30]}" for c in CORRUPT])
def test_a_corrupt_body_is_refused_naming_the_message(name, tamper, message):
    comp = compressor(name)
    sent = message_for(comp, sender=2)
    sent.stamp(5)
    send(comp, gradient(15), sent, 5, 2)
    body, header = tamper(sent, read_header(sent.wire))
    out = np.zeros(D, np.float32)
    with pytest.raises(WireFormatError) as error:
        comp.decompress(body, header, out, what=WHAT)
    assert str(error.value).startswith(WHAT + ": ")
    assert message in str(error.value)
