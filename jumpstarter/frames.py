"""`StreamRequest`/`StreamResponse` frames: what a received one means, and a fast codec for them.

`content(frame)` is the one reading of a frame (PROTOCOL.md §5): DATA carries bytes,
GOAWAY ends the stream, RST_STREAM resets it; PING and unknown types carry nothing.
The session's stream pump, `splice` and both client streams all use it.

The codec (`payload` = 1 bytes, `frame_type` = 2 enum):

Byte streams are the bulk path: building a protobuf message copies the payload
once more than needed. The bytes produced are exactly what protobuf would
produce (proto3 omits default values), and anything but the simple layouts is
decoded by protobuf itself, so peers cannot tell the difference.
"""

from __future__ import annotations

from typing import Any

from jumpstarter.v1 import router_pb2

DATA = router_pb2.FRAME_TYPE_DATA
GOAWAY = router_pb2.FRAME_TYPE_GOAWAY
RST_STREAM = router_pb2.FRAME_TYPE_RST_STREAM
NOTHING = b""


class StreamReset(ConnectionResetError):
    """The peer sent RST_STREAM: the stream ends abruptly, not at a clean end."""

    def __init__(self, peer: str) -> None:
        super().__init__(f"the {peer} reset the stream")


class Frame:
    __slots__ = ("payload", "frame_type")

    def __init__(self, payload: bytes = b"", frame_type: int = DATA) -> None:
        self.payload = payload
        self.frame_type = frame_type


def content(frame: Any, peer: str = "exporter") -> bytes | None:
    """The bytes a received frame carries (b"" for none), None at end of stream (GOAWAY).

    Raises `StreamReset` (a ConnectionResetError naming `peer`) for RST_STREAM.
    `frame` is a `Frame` or a protobuf `StreamRequest`/`StreamResponse`.
    """
    kind = frame.frame_type
    if kind == DATA:
        return frame.payload  # type: ignore[no-any-return]
    if kind == GOAWAY:
        return None
    if kind == RST_STREAM:
        raise StreamReset(peer)
    return NOTHING  # PING and frame types newer than this code carry no stream bytes


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode(frame: Frame) -> bytes:
    payload = frame.payload
    head = b"\x0a" + _varint(len(payload)) if payload else b""
    tail = b"\x10" + _varint(frame.frame_type) if frame.frame_type else b""
    return b"".join((head, payload, tail)) if payload else tail


def decode(data: bytes) -> Frame:
    if not data:
        return Frame()
    if data[0] == 0x0A:  # field 1, length-delimited: payload
        length = 0
        shift = 0
        index = 1
        while index < len(data) and index < 11:
            byte = data[index]
            length |= (byte & 0x7F) << shift
            index += 1
            if not byte & 0x80:
                break
            shift += 7
        if index + length == len(data):
            return Frame(data[index:])
    elif len(data) == 2 and data[0] == 0x10 and data[1] < 0x80:  # only a frame type
        return Frame(b"", data[1])
    message = router_pb2.StreamRequest.FromString(data)  # any other layout: let protobuf decide
    return Frame(message.payload, message.frame_type)
