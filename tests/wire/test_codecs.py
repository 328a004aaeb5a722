"""hpcgrad/wire/codecs/: every codec's encode -> decode round trip, its decoder's refusals, its
corrupt() (the adversaries' edit), and the registry that a new codec module joins.

The byte-level agreement with docs/wire-format.md is test_*wire_format_doc.py's; here each
codec is checked against what its docstring promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from hpcgrad.errors import WireFormatError
from hpcgrad.kernels.generic import packed_length
from hpcgrad.kernels.sparse import positions as bitstream
from hpcgrad.wire import HEADER_SIZE, Header, round_up
from hpcgrad.wire.codecs import (BASE3, CODECS, FP16, FP32, QSGD, SCALED_SIGN, SIGN1,
                                 SPARSE_SIGN, SPARSE_VALUES, TERNARY2, Codec, EncodedBody,
                                 FixedLengthCodec, QSGDCodec, SparseValuesCodec, by_id,
                                 corruptible, decode_message, encode_sparse_ternary)

LENGTHS = [1, 7, 8, 9, 37, 64, 65]
SENTINEL = 0xA5
#: An id no codec has: "unknown" whatever codecs are added later.
UNASSIGNED = max(CODECS) + 1


def sample(d: int, seed: int = 0) -> np.ndarray:
    """Gaussian values with exact zeros (every 5th), a -0.0 and ties of magnitude 0.5."""
    v = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
    v[1::7], v[2::7] = 0.5, -0.5
    v[::5] = 0
    if d > 3:
        v[3] = -0.0
    return v


def encode(codec, values, **options):
    """The body in a zeroed buffer of the codec's capacity (8-byte padded), followed by
    sentinel bytes that no encoder may touch."""
    capacity = round_up(codec.max_body_length(values.size))
    buf = np.full(capacity + 16, SENTINEL, dtype=np.uint8)
    buf[:capacity] = 0
    written = codec.encode(values, buf[:capacity], **options)
    assert isinstance(written, EncodedBody) and written.codec == codec.id
    assert written.length <= codec.max_body_length(values.size)
    assert (buf[capacity:] == SENTINEL).all(), "the encoder wrote past the capacity"
    return buf, written


def message(written: EncodedBody, buf, count: int) -> bytes:
    header = bytearray(HEADER_SIZE)
    Header(written.codec, count, written.length, 0, 1, written.flags).pack_into(header)
    return bytes(header) + bytes(buf[: written.length])


def sign(v):
    return np.where(v < 0, -1.0, np.where(v > 0, 1.0, 0.0)).astype(np.float32)


# ------------------------------------------------------------------ the registry


def test_every_codec_is_registered_once_by_its_id_in_id_order():
    assert list(CODECS) == sorted(CODECS) == list(range(1, 11))
    assert {c.name for c in CODECS.values()} == {
        "fp32", "fp16", "sign1", "ternary2", "sparse-sign", "base3", "qsgd", "sparse-values",
        "scaled-sign", "vote-counts"}
    for codec_id, codec in CODECS.items():
        assert by_id(codec_id) is codec and codec.id == codec_id


def test_an_unknown_id_is_named():
    with pytest.raises(WireFormatError, match=f"uplink: unknown codec id {UNASSIGNED}"):
        by_id(UNASSIGNED, what="uplink")


def test_a_new_codec_class_registers_itself_and_decode_message_knows_it():
    class Bytes(FixedLengthCodec):
        """A test codec: one uint8 per coordinate."""
        id, name = UNASSIGNED, "test-bytes"

        def body_length(self, count):
            return count

        def encode(self, values, padded_body):
            padded_body[: values.size] = values.astype(np.uint8)
            return self.encoded(values.size)

        def decode(self, body, count, flags=0, segments=None):
            return body.astype(np.float32)

    try:
        assert isinstance(CODECS[UNASSIGNED], Bytes) and not corruptible(CODECS[UNASSIGNED])
        buf, written = encode(CODECS[UNASSIGNED], np.array([1, 2, 250], np.float32))
        header, values = decode_message(message(written, buf, 3))
        assert header.codec == UNASSIGNED and values.tolist() == [1, 2, 250]
    finally:
        del CODECS[UNASSIGNED]


def test_a_taken_or_impossible_id_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match="id 3 is taken by SignCodec"):
        type("Again", (FixedLengthCodec,), {"id": 3, "name": "again"})
    with pytest.raises(TypeError, match="id 256 is not an integer in 1..255"):
        type("Wide", (FixedLengthCodec,), {"id": 256, "name": "wide"})
    assert 256 not in CODECS and list(CODECS) == list(range(1, 11))


def test_a_family_base_without_an_id_is_not_registered():
    before = dict(CODECS)
    type("Family", (Codec,), {"name": "family"})
    assert CODECS == before


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("codec, expected", [
    (FP32, lambda v: v),
    (FP16, lambda v: v.astype(np.float16).astype(np.float32)),
    (SIGN1, lambda v: np.where(v < 0, -1.0, 1.0)),
    (TERNARY2, sign),
    (SPARSE_SIGN, sign),
    (BASE3, sign),
    (SPARSE_VALUES, lambda v: v),
    (SCALED_SIGN, lambda v: np.where(v < 0, -1.0, 1.0) * np.float32(  # float64, in order
        sum(abs(float(x)) for x in v) / v.size)),
], ids=lambda c: c.name if isinstance(c, Codec) else None)
def test_decode_of_encode_is_what_the_codec_promises(codec, expected, d):
    v = sample(d, seed=d)
    buf, written = encode(codec, v)
    decoded = codec.decode(buf[: written.length], d, written.flags)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, np.asarray(expected(v), np.float32))
    header, again = decode_message(message(written, buf, d))
    assert (header.codec, header.flags, header.body_length) == tuple(written)
    np.testing.assert_array_equal(again, decoded)


@pytest.mark.parametrize("codec", [FP32, FP16, SIGN1, TERNARY2, SPARSE_SIGN, BASE3,
                                   SPARSE_VALUES, SCALED_SIGN, QSGD], ids=lambda c: c.name)
def test_all_zeros_round_trip(codec):
    v = np.zeros(13, np.float32)
    buf, written = encode(codec, v)
    decoded = codec.decode(buf[: written.length], 13, written.flags)
    want = np.ones(13, np.float32) if codec is SIGN1 else v  # sign1 has no zero: sign(0) = +1
    np.testing.assert_array_equal(decoded, want)


def test_sparse_values_fp16_rounds_the_values_and_sets_its_flag():
    v = sample(37)
    buf, written = encode(SPARSE_VALUES, v, fp16=True)
    assert written.flags & SparseValuesCodec.FP16
    np.testing.assert_array_equal(SPARSE_VALUES.decode(buf[: written.length], 37,
                                                       written.flags),
                                  v.astype(np.float16).astype(np.float32))


def test_encode_sparse_ternary_takes_base3_only_when_shorter():
    dense = sample(200)
    dense[dense == 0] = 1.0  # every coordinate non-zero: base3's d/5 bytes win
    for v, allow, want in [(dense, True, BASE3), (dense, False, SPARSE_SIGN),
                           (np.eye(1, 200, 7, dtype=np.float32)[0], True, SPARSE_SIGN)]:
        found = np.flatnonzero(v).astype(np.int64)
        buf = np.zeros(round_up(SPARSE_SIGN.max_body_length(200)), np.uint8)
        written = encode_sparse_ternary(found, (v[found] < 0).astype(np.uint8), found.size,
                                        200, buf, allow_base3=allow)
        assert written.codec == want.id
        np.testing.assert_array_equal(want.decode(buf[: written.length], 200, written.flags),
                                      sign(v))


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("segments", [[37], [13, 24], [1, 7, 9]])
def test_qsgd_levels_are_within_one_step_of_the_value(bits, segments):
    d = sum(segments)
    v = sample(d, seed=bits)
    buf, written = encode(QSGD, v, bits=bits, key=11, segments=segments)
    assert QSGDCodec.split_flags(written.flags) == (bits, 0)
    assert written.length == QSGD.body_length_at(d, bits, segments)
    decoded = QSGD.decode(buf[: written.length], d, written.flags, segments)
    norms = buf[: 4 * len(segments)].view("<f4")
    steps = np.repeat(norms / np.float32((1 << (bits - 1)) - 1), segments)
    assert (np.abs(decoded - v) <= steps * (1 + 1e-6)).all()
    assert (np.sign(decoded) * np.sign(v) >= 0).all()  # a level never has the wrong sign
    again, _ = encode(QSGD, v, bits=bits, key=11, segments=segments)
    np.testing.assert_array_equal(again, buf)  # the coins are the key's: it repeats


def test_qsgd_at_width_zero_is_the_fp32_values_and_carries_next():
    v = sample(21)
    buf, written = encode(QSGD, v, bits=0, next_bits=5)
    assert QSGDCodec.split_flags(written.flags) == (0, 5) and written.length == 4 * 21
    np.testing.assert_array_equal(QSGD.decode(buf[: written.length], 21, written.flags), v)
    with pytest.raises(WireFormatError, match="name no width"):
        encode(QSGD, v, bits=17)
    with pytest.raises(WireFormatError, match="tensors of 20 coordinates for 21 values"):
        encode(QSGD, v, bits=4, segments=[10, 10])


fast = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
finite = hnp.arrays(np.float32, st.integers(1, 90),
                    elements=st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0]),
                                       st.floats(-1e4, 1e4, width=32)))


@fast
@given(values=finite)
def test_every_sign_like_codec_agrees_on_any_vector(values):
    """ternary2, sparse-sign and base3 all carry sign(v); sign1 and scaled-sign its signs."""
    for codec in (TERNARY2, SPARSE_SIGN, BASE3):
        buf, written = encode(codec, values)
        np.testing.assert_array_equal(codec.decode(buf[: written.length], values.size,
                                                   written.flags), sign(values))
    buf, written = encode(SIGN1, values)
    np.testing.assert_array_equal(SIGN1.decode(buf[: written.length], values.size),
                                  np.where(values < 0, -1.0, 1.0))
    buf, written = encode(SPARSE_VALUES, values)
    np.testing.assert_array_equal(SPARSE_VALUES.decode(buf[: written.length], values.size,
                                                       written.flags), values)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("codec, flags, words", [
    (FP32, 1, "flags 0x1 set; fp32 defines none"),
    (SIGN1, 0x100, "flags 0x100 set; sign1 defines none"),
    (TERNARY2, 2, "ternary2 defines none"),
    (SCALED_SIGN, 4, "scaled-sign defines none"),
    (BASE3, 1, "base3 defines none"),
    (SPARSE_SIGN, 3, "name no position coding"),
    (SPARSE_SIGN, 0x0100, "name no position coding"),  # raw coding with a Rice k
    (SPARSE_SIGN, 2 | (57 << 8), "name no position coding"),
    (SPARSE_VALUES, 1 << 6, "are not valid"),
    (QSGD, 1, "name no width"),
    (QSGD, 17, "name no width"),
    (QSGD, 4 | (1 << 8), "name no width"),
    (QSGD, 4 | (1 << 5), "name no width"),
], ids=lambda x: x.name if isinstance(x, Codec) else None)
def test_bad_flags_are_named(codec, flags, words):
    v = sample(16)
    buf, written = encode(codec, v)
    bad = written._replace(flags=flags)
    with pytest.raises(WireFormatError, match=words):
        decode_message(message(bad, buf, 16))


@pytest.mark.parametrize("codec", [FP32, FP16, SIGN1, TERNARY2, SCALED_SIGN],
                         ids=lambda c: c.name)
def test_a_fixed_length_body_of_another_length_is_refused(codec):
    buf, written = encode(codec, sample(37))
    whole = message(written, buf, 37)
    for bad in (written._replace(length=written.length - 1),
                written._replace(length=written.length + 1)):
        with pytest.raises(WireFormatError, match=f"does not match {codec.name}"):
            decode_message(message(bad, np.append(buf, 0), 37))
    with pytest.raises(WireFormatError, match="header says"):
        decode_message(whole[:-1])


@pytest.mark.parametrize("codec, d", [(SPARSE_SIGN, 37), (SPARSE_SIGN, 200), (BASE3, 37),
                                      (SPARSE_VALUES, 37), (SPARSE_VALUES, 200)])
def test_a_truncated_or_lengthened_variable_body_is_refused(codec, d):
    buf, written = encode(codec, sample(d))
    body = buf[: written.length]
    with pytest.raises(WireFormatError, match=codec.name):
        codec.decode(body[:-1], d, written.flags)
    with pytest.raises(WireFormatError, match=codec.name):
        codec.decode(np.append(body, np.uint8(0)), d, written.flags)


def test_qsgd_bodies_of_another_length_are_refused():
    buf, written = encode(QSGD, sample(37), bits=3, segments=[13, 24])
    body = buf[: written.length]
    with pytest.raises(WireFormatError, match="body_length .* does not match qsgd"):
        QSGD.decode(body[:-1], 37, written.flags, [13, 24])
    with pytest.raises(WireFormatError, match="do not cover the message's count"):
        QSGD.decode(body, 37, written.flags, [13, 23])


@pytest.mark.parametrize("codec", [SIGN1, SCALED_SIGN, TERNARY2], ids=lambda c: c.name)
def test_set_padding_bits_of_a_plane_are_refused(codec):
    d = 37  # 5 bytes, 3 padding bits
    buf, written = encode(codec, sample(d))
    planes = [0] if codec is not TERNARY2 else [0, TERNARY2.plane_stride(d)]
    for start in planes:
        body = buf[: written.length].copy()
        body[start + packed_length(d) - 1] |= 0x80
        with pytest.raises(WireFormatError, match="padding bits after element 36"):
            codec.decode(body, d)


def test_ternary2_gap_bytes_and_negative_zeros_are_refused():
    d = 37
    buf, written = encode(TERNARY2, sample(d))
    body = buf[: written.length].copy()
    body[packed_length(d)] = 1  # between the planes
    with pytest.raises(WireFormatError, match="padding between the planes"):
        TERNARY2.decode(body, d)
    body = buf[: written.length].copy()
    body[TERNARY2.plane_stride(d)] |= 1  # coordinate 0 is zero in sample()
    with pytest.raises(WireFormatError, match="negative but not non-zero"):
        TERNARY2.decode(body, d)


@pytest.mark.parametrize("scale", [-1.0, np.inf, np.nan])
def test_a_scaled_sign_scale_that_is_not_a_magnitude_is_refused(scale):
    buf, written = encode(SCALED_SIGN, sample(9))
    SCALED_SIGN.write_scale(buf, 9, scale)
    with pytest.raises(WireFormatError, match="scale .* is not a finite number >= 0"):
        SCALED_SIGN.decode(buf[: written.length], 9)


def _sparse_sign_body(positions, count, negative=None):
    """A raw-coded sparse-sign body for any positions (the kernel does not check them)."""
    positions = np.asarray(positions, np.int64)
    negative = np.zeros(positions.size, np.uint8) if negative is None else negative
    out = np.zeros(64, np.uint8)
    bits = bitstream.encode_sparse_sign(positions, negative, positions.size, count,
                                        bitstream.RAW, 0, bitstream.raw_width(count), out)
    return out[: packed_length(bits)], bitstream.RAW


def _sparse_values_body(positions, count):
    positions = np.asarray(positions, np.int64)
    out = np.zeros(64, np.uint8)
    end = bitstream.encode_positions(positions, positions.size, count, bitstream.RAW, 0,
                                     bitstream.raw_width(count), out)
    head = packed_length(end)
    out[head: head + 4 * positions.size].view("<f4")[...] = 1.5
    return out[: head + 4 * positions.size], bitstream.RAW


@pytest.mark.parametrize("build, codec", [(_sparse_sign_body, SPARSE_SIGN),
                                          (_sparse_values_body, SPARSE_VALUES)],
                         ids=["sparse-sign", "sparse-values"])
@pytest.mark.parametrize("positions, words", [
    ([2, 10], "a position is not below the message's count"),
    ([2, 15], "a position is not below the message's count"),
    ([4, 4], "positions are not strictly increasing"),
    ([5, 3], "positions are not strictly increasing"),
])
def test_positions_out_of_range_or_order_are_refused(build, codec, positions, words):
    body, flags = build(positions, 10)
    with pytest.raises(WireFormatError, match=f"{codec.name} body is corrupt: {words}"):
        codec.decode(body, 10, flags)
    good, flags = build([2, 9], 10)
    assert codec.decode(good, 10, flags)[[2, 9]].tolist() in ([1, 1], [1.5, 1.5])


def test_sparse_bitstream_padding_and_bitmap_padding_are_refused():
    body, flags = _sparse_sign_body([1, 4], 10)  # gamma(3) + 2 * 4 + 2 = 13 bits
    body = body.copy()
    body[-1] |= 0x80
    with pytest.raises(WireFormatError, match="padding bits after the bitstream"):
        SPARSE_SIGN.decode(body, 10, flags)
    body, flags = _sparse_values_body([1, 4], 10)  # 11 bits of positions, then values
    body = body.copy()
    body[1] |= 0x80
    with pytest.raises(WireFormatError, match="padding bits after the bitstream"):
        SPARSE_VALUES.decode(body, 10, flags)
    v = sample(37)
    found = np.flatnonzero(v).astype(np.int64)
    buf = np.zeros(round_up(SPARSE_VALUES.max_body_length(37)), np.uint8)
    written = SPARSE_VALUES.encode_entries(found, v[found], found.size, 37, buf,
                                           marked=np.ones(found.size, np.uint8))
    assert found.size % 8  # so the membership bitmap has padding bits
    buf[written.length - 1] |= 0x80
    with pytest.raises(WireFormatError, match="membership bitmap: padding bits"):
        SPARSE_VALUES.decode(buf[: written.length], 37, written.flags)


@pytest.mark.parametrize("body, d, words", [(b"\xf3", 5, "above 242"),
                                            (b"\x58\x05", 6, "past the last coordinate")])
def test_corrupt_base3_bytes_are_named(body, d, words):
    with pytest.raises(WireFormatError, match=f"base3 body is corrupt: .*{words}"):
        BASE3.decode(np.frombuffer(body, np.uint8), d)


def test_qsgd_padding_and_signed_zero_levels_are_refused():
    v = sample(13)
    buf, written = encode(QSGD, v, bits=3)  # 39 bits: one padding bit
    body = buf[: written.length].copy()
    body[-1] |= 0x80
    with pytest.raises(WireFormatError, match="padding bits after a tensor's last field"):
        QSGD.decode(body, 13, written.flags)
    body = buf[: written.length].copy()
    body[4] = (int(body[4]) & 0xF8) | 0x04  # field 0 (v[0] == 0): level 0, sign bit set
    with pytest.raises(WireFormatError, match="a zero level has its sign bit set"):
        QSGD.decode(body, 13, written.flags)
    body = buf[: written.length].copy()
    body[:4] = np.frombuffer(np.float32(-1).tobytes(), np.uint8)
    with pytest.raises(WireFormatError, match="norm is negative"):
        QSGD.decode(body, 13, written.flags)


# ------------------------------------------------------------------ corrupt()


CORRUPTIBLE = [(FP32, {}), (FP16, {}), (SIGN1, {}), (SCALED_SIGN, {}), (TERNARY2, {}),
               (SPARSE_SIGN, {}), (SPARSE_VALUES, {}), (SPARSE_VALUES, {"fp16": True}),
               (QSGD, {"bits": 3, "segments": "two tensors"}), (QSGD, {"bits": 8}),
               (QSGD, {"bits": 0})]
IDS = [f"{c.name}-{'-'.join(f'{k}{v}' for k, v in o.items()) or 'plain'}"
       for c, o in CORRUPTIBLE]


def test_every_uplink_codec_but_base3_can_be_corrupted():
    # vote-counts is a node leader's message (--hierarchy node), never a worker's: adversaries
    # corrupt their own sign messages before the leader counts them.
    assert [c.name for c in CODECS.values() if not corruptible(c)] == ["base3", "vote-counts"]


def _resolved(options, d):
    """``segments="two tensors"``: tensors of 13 and d - 13 coordinates."""
    if options.get("segments") == "two tensors":
        return {**options, "segments": [13, d - 13]}
    return options


def _corrupt(codec, buf, written, d, options, rng=None):
    codec.corrupt(buf, d, written.flags, written.length, rng,
                  segments=options.get("segments"))


def _decoded(codec, buf, written, d, options):
    return codec.decode(buf[: written.length].copy(), d, written.flags,
                        options.get("segments"))


@pytest.mark.parametrize("d", [37, 64])
@pytest.mark.parametrize("codec, options", CORRUPTIBLE, ids=IDS)
def test_invert_negates_the_message_and_twice_restores_every_bit(codec, options, d):
    options = _resolved(options, d)
    v = sample(d)
    buf, written = encode(codec, v, **options)
    honest = _decoded(codec, buf, written, d, options)
    before = buf.copy()
    _corrupt(codec, buf, written, d, options)
    assert not np.array_equal(buf, before)
    np.testing.assert_array_equal(buf[written.length:], before[written.length:])
    inverted = _decoded(codec, buf, written, d, options)  # decodes: still a valid body
    np.testing.assert_array_equal(inverted, -honest)
    _corrupt(codec, buf, written, d, options)
    np.testing.assert_array_equal(buf, before)


@pytest.mark.parametrize("codec, options", CORRUPTIBLE, ids=IDS)
def test_random_keeps_a_valid_body_its_support_and_repeats_with_its_seed(codec, options):
    d = 400
    options = _resolved(options, d)
    v = sample(d)
    buf, written = encode(codec, v, **options)
    honest = _decoded(codec, buf, written, d, options)
    before = buf.copy()
    _corrupt(codec, buf, written, d, options, np.random.default_rng(7))
    assert not np.array_equal(buf, before)
    np.testing.assert_array_equal(buf[written.length:], before[written.length:])
    noisy = _decoded(codec, buf, written, d, options)
    if codec in (TERNARY2, SPARSE_SIGN, SPARSE_VALUES) or (codec is QSGD and options["bits"]):
        np.testing.assert_array_equal(noisy != 0, honest != 0)  # the same support
    if codec in (SIGN1, SCALED_SIGN, TERNARY2, SPARSE_SIGN) or (codec is QSGD
                                                                 and options["bits"]):
        np.testing.assert_array_equal(np.abs(noisy), np.abs(honest))  # signs only
    if codec in (FP32, FP16, SPARSE_VALUES) or (codec is QSGD and not options["bits"]):
        assert np.linalg.norm(noisy) == pytest.approx(np.linalg.norm(honest), rel=1e-2)
    again = before.copy()
    _corrupt(codec, again, written, d, options, np.random.default_rng(7))
    np.testing.assert_array_equal(again, buf)


def test_sign1_corruption_keeps_set_padding_bits():
    buf, written = encode(SIGN1, sample(37))
    buf[written.length - 1] |= 0xE0  # the 3 padding bits, set on purpose
    for rng in (None, np.random.default_rng(1)):
        SIGN1.corrupt(buf, 37, 0, written.length, rng)
        assert buf[written.length - 1] >> 5 == 0x7


def test_corrupting_a_corrupt_sparse_body_names_it():
    body, flags = _sparse_sign_body([5, 3], 10)
    with pytest.raises(WireFormatError, match="rank 2's uplink: sparse-sign body is corrupt"):
        SPARSE_SIGN.corrupt(body.copy(), 10, flags, body.size, what="rank 2's uplink")


@pytest.mark.parametrize("codec", [SPARSE_SIGN, SPARSE_VALUES], ids=lambda c: c.name)
@pytest.mark.parametrize("d, where", [(4, [3]), (1000, [999]), (1 << 20, [(1 << 20) - 1])])
def test_raw_bodies_carry_no_rice_parameter(codec, d, where):
    """The encoder once sent a raw (or bitmap) body with the Rice k it had tried in its
    flags, which every decoder (rightly) refuses."""
    v = np.zeros(d, np.float32)
    v[where] = -2.0
    buf, written = encode(codec, v)
    assert written.flags == bitstream.RAW
    np.testing.assert_array_equal(codec.decode(buf[: written.length], d, written.flags), v
                                  if codec is SPARSE_VALUES else sign(v))
