"""The fast frame codec produces and reads exactly what protobuf does."""

from __future__ import annotations

import os

import pytest
from google.protobuf.message import DecodeError

from jumpstarter import frames
from jumpstarter.v1 import router_pb2


@pytest.mark.parametrize(
    "payload, frame_type",
    [
        (b"", 0),
        (b"x", 0),
        (os.urandom(127), 0),
        (os.urandom(128), 0),
        (os.urandom(70000), 0),
        (os.urandom(1 << 20), 0),
        (b"", 7),
        (b"", 6),
        (b"", 3),
        (b"abc", 7),
        (b"", 200),
    ],
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


# -- what a received frame means (frames.content): the one reading used by every stream end --

PING = router_pb2.FRAME_TYPE_PING


@pytest.mark.parametrize(
    "make", [frames.Frame, lambda p, t: router_pb2.StreamResponse(payload=p, frame_type=t)]
)
def test_data_frames_carry_their_bytes_and_empty_ones_carry_nothing(make):
    assert frames.content(make(b"abc", frames.DATA)) == b"abc"
    assert frames.content(make(b"", frames.DATA)) == b""


def test_goaway_is_end_of_stream_even_with_a_payload():
    assert frames.content(frames.Frame(b"", frames.GOAWAY)) is None
    assert frames.content(frames.Frame(b"ignored", frames.GOAWAY)) is None


@pytest.mark.parametrize("frame_type", [PING, 1, 2, 4, 5, 8, 200])
def test_ping_and_unknown_frame_types_carry_no_bytes_and_do_not_end_the_stream(frame_type):
    assert frames.content(frames.Frame(b"not stream data", frame_type)) == b""


def test_rst_stream_raises_a_connection_reset_naming_the_peer():
    with pytest.raises(ConnectionResetError, match="^the exporter reset the stream$") as caught:
        frames.content(frames.Frame(b"x", frames.RST_STREAM))
    assert isinstance(caught.value, frames.StreamReset)
    with pytest.raises(frames.StreamReset, match="^the client reset the stream$"):
        frames.content(frames.Frame(b"", frames.RST_STREAM), "client")
