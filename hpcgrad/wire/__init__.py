"""The wire format: what travels between ranks, independent of MPI.

* :mod:`hpcgrad.wire.header` -- the 32-byte message header and the preallocated,
  8-byte-padded :class:`MessageBuffer` (re-exported here);
* :mod:`hpcgrad.wire.codecs` -- the body layouts, one class per codec id.

``docs/wire-format.md`` is the normative description of both.
"""

from .header import (HEADER, HEADER_SIZE, MAGIC, VERSION, WORD, Header, MessageBuffer,
                     expect_header, read_header, round_up)

__all__ = ["HEADER", "HEADER_SIZE", "MAGIC", "VERSION", "WORD", "Header", "MessageBuffer",
           "expect_header", "read_header", "round_up"]
