"""JPEG frames and MJPEG framing: what a camera sends is parsed, bounded and checked before it goes on.

Three sans-IO parsers shared by the video drivers and the video client:

* `jpeg_info(frame)`: a frame is one complete baseline/progressive JPEG (SOI, segments with
  lengths, a SOF with its dimensions, entropy data, EOI); the dimensions come from the SOF;
* `JpegSplitter`: consecutive JPEGs as `v4l2-ctl --stream-to=-` writes them, split by walking
  each frame's segments (never by searching for FFD9: an EXIF thumbnail has its own EOI);
* `MultipartParser`: a `multipart/x-mixed-replace` body (ustreamer's `/stream`, and the byte
  stream our video drivers export), parts read by Content-Length when given, else up to the
  next boundary. `part(frame)` writes one such part.

Every buffer is bounded by the frame limit: oversized frames are refused, never collected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_FRAME = 2 * 1024 * 1024
# A snapshot travels base64-encoded in one gRPC message of at most 4 MiB: 3 MiB is the ceiling.
HARD_MAX_FRAME = 3 * 1024 * 1024
MAX_HEADERS = 8 * 1024  # one part's headers
MAX_GAP = 64 * 1024  # preamble or junk before a boundary
BOUNDARY = b"jumpstarterframe"
CONTENT_TYPE = "multipart/x-mixed-replace; boundary=" + BOUNDARY.decode()

SOI = b"\xff\xd8"
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT/JPG/DAC)
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length
_SOS, _EOI = 0xDA, 0xD9
_BOUNDARY_RE = re.compile(r';\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)


class BadFrame(ValueError):
    """What the camera sent is not a (bounded) JPEG or MJPEG stream."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    size: int


def _walk(data: bytes | bytearray, start: int = 0) -> tuple[int, int, int] | None:
    """(end, width, height) of the JPEG at `start`; None while incomplete; BadFrame if malformed."""
    n = len(data)
    if n - start < 2:
        return None
    if data[start : start + 2] != SOI:
        raise BadFrame(f"not a JPEG: starts with {bytes(data[start : start + 4]).hex()} instead of ffd8")
    width = height = 0
    i = start + 2
    while True:
        if i + 2 > n:
            return None
        if data[i] != 0xFF:
            raise BadFrame(f"corrupt JPEG: expected a marker at byte {i - start}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == _EOI:
            if not (width and height):
                raise BadFrame("corrupt JPEG: no frame header (SOF) with its dimensions")
            return i + 2, width, height
        if marker in _STANDALONE:
            i += 2
            continue
        if i + 4 > n:
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            raise BadFrame(f"corrupt JPEG: segment length {length} at byte {i - start}")
        if marker in _SOF:
            if i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
        i += 2 + length
        if marker == _SOS:
            if not (width and height):
                raise BadFrame("corrupt JPEG: scan before the frame header (SOF)")
            i = _skip_entropy(data, i)
            if i < 0:
                return None


def _skip_entropy(data: bytes | bytearray, i: int) -> int:
    """The index of the marker that ends entropy-coded data at `i` (-1 while incomplete)."""
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= len(data):
            return -1
        following = data[j + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            i = j + 1  # stuffed byte, restart marker, or fill: still inside the scan
            continue
        return j


def jpeg_info(frame: bytes) -> JpegInfo:
    """The dimensions of `frame`, which must be exactly one complete JPEG (BadFrame otherwise)."""
    found = _walk(frame)
    if found is None:
        raise BadFrame(f"truncated JPEG ({len(frame)} bytes, no end of image)")
    end, width, height = found
    if frame[end:].strip(b"\x00"):  # V4L2 drivers may pad a buffer with zeros; anything else is wrong
        raise BadFrame(f"{len(frame) - end} bytes of garbage after the end of the JPEG")
    return JpegInfo(width, height, len(frame))


def check_limit(max_frame: int) -> int:
    if (
        isinstance(max_frame, bool)
        or not isinstance(max_frame, int)
        or not 1024 <= max_frame <= HARD_MAX_FRAME
    ):
        raise ValueError(f"max_frame: expected a byte count from 1024 to {HARD_MAX_FRAME}, got {max_frame!r}")
    return max_frame


class JpegSplitter:
    """Consecutive JPEGs (zero padding between them allowed) -> one bytes object per frame."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            zeros = len(self._buffer) - len(self._buffer.lstrip(b"\x00"))
            del self._buffer[:zeros]
            found = _walk(self._buffer)
            if found is None:
                if len(self._buffer) > self.max_frame:
                    raise BadFrame(f"frame larger than the limit of {self.max_frame} bytes")
                return frames
            end = found[0]
            if end > self.max_frame:
                raise BadFrame(f"frame of {end} bytes is larger than the limit of {self.max_frame} bytes")
            frames.append(bytes(self._buffer[:end]))
            del self._buffer[:end]

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame."""
        return len(self._buffer)


def boundary_of(content_type: str) -> bytes:
    """The boundary of a `multipart/x-mixed-replace` (or multipart/mixed) content type."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in ("multipart/x-mixed-replace", "multipart/mixed"):
        raise BadFrame(f"not an MJPEG stream: content type {content_type[:80]!r}")
    found = _BOUNDARY_RE.search(content_type)
    if not found:
        raise BadFrame(f"MJPEG stream without a boundary: {content_type[:80]!r}")
    boundary = (found.group(1) or found.group(2)).encode("latin-1")
    return boundary[2:] if boundary.startswith(b"--") and len(boundary) > 2 else boundary


def part(frame: bytes, boundary: bytes = BOUNDARY) -> bytes:
    """One multipart part holding `frame` (the format ustreamer and browsers use)."""
    head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (boundary, len(frame))
    return head + frame + b"\r\n"


class MultipartParser:
    """A multipart/x-mixed-replace body -> JPEG frames, each checked with `jpeg_info`."""

    def __init__(self, boundary: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.delimiter = b"--" + boundary
        self.max_frame = max_frame
        self.ended = False  # the closing `--boundary--` was seen
        self._buffer = bytearray()
        self._state = "delimiter"
        self._length: int | None = None
        self._scanned = 0  # how far a part without Content-Length was searched for its boundary

    def feed(self, data: bytes) -> list[bytes]:
        if self.ended:
            return []
        self._buffer += data
        frames: list[bytes] = []
        while not self.ended:
            step = getattr(self, "_" + self._state)()
            if step is None:
                return frames
            if isinstance(step, bytes):
                frames.append(step)
        return frames

    @property
    def pending(self) -> bool:
        """A part has started but not finished."""
        return self._state != "delimiter"

    def _delimiter(self) -> bool | None:
        at = self._buffer.find(self.delimiter)
        if at < 0 or len(self._buffer) < at + len(self.delimiter) + 2:
            if len(self._buffer) > MAX_GAP + len(self.delimiter):
                raise BadFrame(f"no multipart boundary within {MAX_GAP} bytes: not an MJPEG stream")
            return None
        after = at + len(self.delimiter)
        if self._buffer[after : after + 2] == b"--":
            self.ended = True
            return True
        eol = self._buffer.find(b"\r\n", after)
        if eol < 0 or eol - after > 256:  # transport padding after a boundary is short
            if eol >= 0 or len(self._buffer) - after > 256:
                raise BadFrame("malformed multipart boundary line")
            return None
        del self._buffer[: eol + 2]
        self._state = "headers"
        return True

    def _headers(self) -> bool | None:
        if self._buffer.startswith(b"\r\n"):
            end, block = 2, b""
        else:
            at = self._buffer.find(b"\r\n\r\n")
            if at < 0:
                if len(self._buffer) > MAX_HEADERS:
                    raise BadFrame(f"multipart part headers longer than {MAX_HEADERS} bytes")
                return None
            end, block = at + 4, bytes(self._buffer[:at])
        self._length = None
        for line in block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                if not value.isdigit() or len(value) > 12:
                    raise BadFrame(f"bad Content-Length {value[:20]!r} in a multipart part")
                self._length = int(value)
                if self._length > self.max_frame:
                    raise BadFrame(
                        f"frame of {self._length} bytes is larger than the limit of {self.max_frame} bytes"
                    )
            elif name == b"content-type" and value.split(b";")[0].strip().lower() not in (
                b"image/jpeg",
                b"image/jpg",
            ):
                raise BadFrame(f"a part of type {value[:40].decode('latin-1')!r}, not image/jpeg")
        del self._buffer[:end]
        self._state = "body"
        return True

    def _body(self) -> bytes | None:
        if self._length is not None:
            if len(self._buffer) < self._length:
                return None
            end = skip = self._length
        else:
            needle = b"\r\n" + self.delimiter
            end = self._buffer.find(needle, max(0, self._scanned - len(needle)))  # resume: no rescans
            if end < 0:
                if len(self._buffer) > self.max_frame + len(needle):
                    raise BadFrame(f"frame larger than the limit of {self.max_frame} bytes")
                self._scanned = len(self._buffer)
                return None
            skip = end + 2
        frame = bytes(self._buffer[:end])
        del self._buffer[:skip]
        self._state, self._scanned = "delimiter", 0
        if len(frame) > self.max_frame:
            raise BadFrame(f"frame of {len(frame)} bytes is larger than the limit of {self.max_frame} bytes")
        jpeg_info(frame)
        return frame
