"""The fast frame codec produces and reads exactly what protobuf does."""

from __future__ import annotations

import os

import pytest
from google.protobuf.message import DecodeError

from jumpstarter import frames
from jumpstarter.v1 import router_pb2


@pytest.mark.parametrize(
    "payload, frame_type",
    [(b"", 0), (b"x", 0), (os.urandom(127), 0), (os.urandom(128), 0), (os.urandom(70000), 0),
     (os.urandom(1 << 20), 0), (b"", 7), (b"", 6), (b"", 3), (b"abc", 7), (b"", 200)],
)
def test_encoding_is_byte_identical_to_protobuf_and_round_trips(payload, frame_type):
    reference = router_pb2.StreamRequest(payload=payload, frame_type=frame_type).SerializeToString()
    assert frames.encode(frames.Frame(payload, frame_type)) == reference
    decoded = frames.decode(reference)
    assert (decoded.payload, decoded.frame_type) == (payload, frame_type)


def test_unusual_layouts_fall_back_to_protobuf():
    # frame type first, then payload; and an unknown field 9 that must be ignored
    data = b"\x10\x07" + b"\x0a\x03abc" + b"\x48\x01"
    decoded = frames.decode(data)
    assert (decoded.payload, decoded.frame_type) == (b"abc", 7)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\xff\xff\xff",  # payload length varint never ends
        b"\x0a\x05ab",  # payload shorter than its length
        b"\x0a\x01ab",  # bytes after the payload that are no whole field
        b"\x10",  # frame type tag without its value
    ],
)
def test_garbage_is_rejected_as_a_protobuf_decode_error(data):
    with pytest.raises(DecodeError, match="Error parsing message with type 'jumpstarter.v1.StreamRequest'"):
        frames.decode(data)
