"""The node combine's kernels (hpcgrad/kernels/vote_counts.py) against their NumPy statement,
and the vote from the nodes' counts against the flat vote, byte for byte: m = 1..15 voters,
odd lengths, every tie rule, nodes of unequal sizes."""

from __future__ import annotations

import numpy as np
import pytest

from hpcgrad.kernels import cpu, vote_counts
from hpcgrad.kernels.generic import TIE_POSITIVE, TIE_RANDOM, TIE_ZERO, packed_length
from hpcgrad.wire import round_up
from hpcgrad.wire.codecs import SIGN1, TERNARY2, VOTE_COUNTS

LENGTHS = [1, 7, 63, 64, 65, 1000, 4097]


def _sign_rows(rng, voters, count, slack=8):
    """Voters' sign1 bodies in 8-byte-aligned rows, zero past the last coordinate."""
    rows = np.zeros((voters, round_up(packed_length(count)) + slack), dtype=np.uint8)
    for k in range(voters):
        SIGN1.encode(rng.standard_normal(count).astype(np.float32), rows[k])
    return rows


def _ternary_rows(rng, voters, count):
    rows = np.zeros((voters, 2 * round_up(packed_length(count))), dtype=np.uint8)
    for k in range(voters):
        values = rng.integers(-1, 2, count).astype(np.float32)
        TERNARY2.encode(values, rows[k])
    return rows


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("count", LENGTHS)
def test_counts_match_the_numpy_statement_for_1_to_15_voters(signed, count):
    rng = np.random.default_rng(count)
    for voters in range(1, 16):
        rows = (_ternary_rows if signed else _sign_rows)(rng, voters, count)
        levels = vote_counts.levels_for(voters, signed)
        out = np.full(levels * round_up(packed_length(count)), 0xAB, dtype=np.uint8)
        vote_counts.count_votes(rows, count, signed, out)
        counts = vote_counts.reference_counts(rows, count, signed)
        assert np.array_equal(out, vote_counts.reference_planes(counts, levels)), voters
        assert counts.max() <= (2 * voters if signed else voters)
        # the codec reads them back as the votes' sums
        flags = VOTE_COUNTS.flags_for(voters, signed)
        sums = VOTE_COUNTS.decode(out[:VOTE_COUNTS.body_length(count, flags)], count, flags)
        want = counts - voters if signed else voters - 2 * counts
        assert np.array_equal(sums, want.astype(np.float32))


def _split(voters, rng):
    """A random partition of 0..voters-1 into consecutive nodes."""
    cuts = sorted(rng.choice(np.arange(1, voters), size=rng.integers(0, voters), replace=False))
    bounds = [0, *cuts, voters]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("tie", [TIE_POSITIVE, TIE_RANDOM, TIE_ZERO])
@pytest.mark.parametrize("count", [5, 64, 129, 3001])
def test_the_vote_from_node_counts_is_the_flat_vote(tie, count):
    rng = np.random.default_rng(count + 10 * tie)
    signed = tie == TIE_ZERO
    stride = round_up(packed_length(count))
    for voters in range(2, 16):
        rows = (_ternary_rows if signed else _sign_rows)(rng, voters, count)
        coins = rng.integers(0, 256, stride, dtype=np.uint8)
        flat_a, flat_b = np.zeros(stride, np.uint8), np.zeros(stride, np.uint8)
        if signed:
            cpu.ternary_vote(rows, count, stride, flat_a, flat_b)
        else:
            cpu.majority_vote(rows, count, tie, coins, flat_a, flat_b)
        nodes = _split(voters, rng) if voters > 2 else [[0], [1]]
        levels = [vote_counts.levels_for(len(n), signed) for n in nodes]
        slot = max(levels) * stride + 8
        node_rows = np.zeros((len(nodes), slot), dtype=np.uint8)
        for i, node in enumerate(nodes):
            vote_counts.count_votes(rows[node], count, signed, node_rows[i])
        a, b = np.zeros(stride, np.uint8), np.zeros(stride, np.uint8)
        vote_counts.vote_from_counts(node_rows, levels, count, voters, signed, tie, coins, a,
                                     a if not signed else b)
        assert np.array_equal(a, flat_a), (voters, nodes)
        if signed:
            assert np.array_equal(b, flat_b), (voters, nodes)


def test_the_codec_refuses_bad_bodies():
    from hpcgrad.errors import WireFormatError

    flags = VOTE_COUNTS.flags_for(3, False)  # counts 0..3 in 2 planes
    body = np.zeros(VOTE_COUNTS.body_length(10, flags), dtype=np.uint8)
    assert body.size == 8 + 2
    with pytest.raises(WireFormatError, match="does not match"):
        VOTE_COUNTS.decode(body[:-1], 10, flags)
    bad = body.copy()
    bad[1] = 0xFF  # bits past coordinate 9 in plane 0
    with pytest.raises(WireFormatError, match="padding bits"):
        VOTE_COUNTS.decode(bad, 10, flags)
    bad = body.copy()
    bad[5] = 1  # between the planes
    with pytest.raises(WireFormatError, match="between the planes"):
        VOTE_COUNTS.decode(bad, 10, flags)
    with pytest.raises(WireFormatError, match="no voters"):
        VOTE_COUNTS.decode(body, 10, 0)
    over = VOTE_COUNTS.flags_for(2, False)  # 2 voters: counts 0..2, but 2 planes hold 3
    bad = np.zeros(VOTE_COUNTS.body_length(10, over), dtype=np.uint8)
    bad[0], bad[8] = 1, 1  # coordinate 0 counts 3
    with pytest.raises(WireFormatError, match="a count of 3 is more than 2"):
        VOTE_COUNTS.decode(bad, 10, over)
    with pytest.raises(ValueError, match="outside 1..32767"):
        VOTE_COUNTS.flags_for(0, False)


def test_the_worked_example_of_the_wire_format_document():
    from pathlib import Path

    from hpcgrad.wire import Header
    from hpcgrad.wire.codecs import decode_message

    padded = np.zeros(16, dtype=np.uint8)
    encoded = VOTE_COUNTS.encode(np.array([1, -1, 3, -3, 1]), padded, voters=3)
    assert encoded.flags == 0x0003 and encoded.length == 9
    assert padded[:9].tobytes() == bytes.fromhex("19 00 00 00 00 00 00 00 0a")
    text = (Path(__file__).resolve().parents[2] / "docs" / "wire-format.md").read_text()
    assert "body (9 bytes): 19 00 00 00 00 00 00 00 0a" in text
    message = bytearray(32 + 9)
    Header(VOTE_COUNTS.id, 5, 9, 4, 1, encoded.flags).pack_into(message)
    message[32:] = padded[:9].tobytes()
    header, values = decode_message(bytes(message))
    assert header.flags == 3 and values.tolist() == [1, -1, 3, -3, 1]
