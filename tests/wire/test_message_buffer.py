"""The outgoing message protocol of ``hpcgrad.wire.MessageBuffer``: begin, write the body,
``write()`` declares it and returns the header sent; ``header`` is what was sent."""

import numpy as np
import pytest

from hpcgrad.errors import WireFormatError
from hpcgrad.wire import HEADER_SIZE, Header, MessageBuffer, read_header


def test_write_returns_the_header_on_the_wire_and_header_shows_it():
    msg = MessageBuffer(Header(5, 100, 40, 0, 3), variable=True)
    assert msg.capacity == 40
    msg.begin(7)
    msg.padded_body[:9] = 1
    sent = msg.write(6, 0x0102, 9)
    assert sent == read_header(msg.wire) == msg.header
    assert (sent.codec, sent.flags, sent.body_length, sent.step, sent.sender, sent.count) == \
        (6, 0x0102, 9, 7, 3, 100)
    assert msg.length == HEADER_SIZE + 9 and msg.body.size == 9 and msg.capacity == 40


def test_begin_clears_the_previous_body_of_a_variable_length_message():
    msg = MessageBuffer(Header(5, 100, 40, 0, 1), variable=True)
    msg.begin(0)
    msg.padded_body[:30] = 0xFF
    msg.write(5, 0, 30)
    msg.begin(1)
    assert not msg.padded_body.any()  # a sparse encoder ORs its bits into zeros
    msg.padded_body[:4] = 0xFF
    msg.write(5, 0, 4)
    assert msg.header.step == 1 and msg.wire.size == HEADER_SIZE + 4


def test_a_fixed_length_message_keeps_its_body_and_header_across_steps():
    msg = MessageBuffer(Header(1, 4, 16, 0, 2))
    msg.padded_body[:16] = 7
    msg.begin(5)
    assert (msg.body == 7).all()  # fixed-length encoders overwrite: no clearing cost
    assert msg.header == Header(1, 4, 16, 5, 2) == read_header(msg.wire)


def test_a_body_over_capacity_is_refused():
    msg = MessageBuffer(Header(5, 100, 16, 0, 1), variable=True)
    with pytest.raises(WireFormatError, match="body of 17 bytes exceeds the message's "
                                              "capacity of 16"):
        msg.write(5, 0, 17)
    with pytest.raises(WireFormatError, match="capacity of 16"):
        msg.receive(Header(5, 100, 17, 0, 0))


def test_receive_describes_the_message_just_parsed():
    msg = MessageBuffer(Header(5, 100, 16, 0, 0), variable=True)
    got = Header(6, 100, 3, 4, 0, 9)
    got.pack_into(msg.raw)
    msg.receive(read_header(msg.raw))
    assert msg.header == got and msg.body.size == 3
    assert np.array_equal(msg.wire, msg.raw[: HEADER_SIZE + 3])


def test_receiving_a_shorter_body_leaves_zero_padding_after_it():
    """A worker's downlink buffer after a long body, then a short one: past the short body
    the bytes are zero again (word kernels read ``padded_body``)."""
    msg = MessageBuffer(Header(5, 100, 40, 0, 0), variable=True)
    for length in (40, 3):
        got = Header(5, 100, length, 0, 0)
        got.pack_into(msg.raw)
        msg.receive(read_header(msg.raw))
        msg.body[:] = 0xAB  # what the body Bcast brings
    assert (msg.padded_body[:3] == 0xAB).all() and not msg.padded_body[3:].any()
