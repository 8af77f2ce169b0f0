"""Binary PPM (P6, what QEMU's `screendump` writes) to PNG, with zlib from the standard library."""

from __future__ import annotations

import re
import struct
import zlib

_HEADER = re.compile(rb"P6\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)\s")
MAX_PIXELS = 16384 * 16384


def ppm_size(ppm: bytes) -> tuple[int, int, int]:
    """(width, height, offset of the pixels) of a P6 image with 8-bit samples; ValueError otherwise."""
    match = _HEADER.match(ppm)
    if match is None:
        raise ValueError("not a binary PPM (P6) image")
    width, height, maxval = (int(g) for g in match.groups())
    if maxval != 255 or not 0 < width * height <= MAX_PIXELS:
        raise ValueError(f"unsupported PPM: {width}x{height}, maxval {maxval}")
    if len(ppm) - match.end() < width * height * 3:
        raise ValueError("truncated PPM image")
    return width, height, match.end()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ppm_to_png(ppm: bytes) -> bytes:
    """The same picture as a PNG (8-bit RGB, each row unfiltered)."""
    width, height, offset = ppm_size(ppm)
    stride = width * 3
    rows = b"".join(b"\0" + ppm[offset + y * stride : offset + (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 6))
        + _chunk(b"IEND", b"")
    )
