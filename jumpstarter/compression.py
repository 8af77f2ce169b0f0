"""Streaming (de)compression for resource streams: gzip, xz, bz2, zstd.

Everything works chunk by chunk; nothing holds a whole image in memory.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from typing import BinaryIO, Protocol

ENCODINGS = ("gzip", "xz", "bz2", "zstd")


class Transform(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


def supported() -> tuple[str, ...]:
    """The encodings this process can handle (zstd needs the `zstandard` package)."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return ("gzip", "xz", "bz2")
    return ENCODINGS


def check(encoding: str | None) -> str | None:
    if encoding in (None, "", "none", "identity"):
        return None
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown compression {encoding!r} (use one of {', '.join(ENCODINGS)})")
    return encoding


def guess(path: str) -> str | None:
    """The encoding implied by a file name suffix."""
    for suffix, name in ((".gz", "gzip"), (".xz", "xz"), (".bz2", "bz2"), (".zst", "zstd")):
        if path.endswith(suffix):
            return name
    return None


class _Decompress:
    """Incremental decompressor that also handles concatenated members/streams."""

    def __init__(self, factory: Callable[[], object], encoding: str) -> None:
        self.factory = factory
        self.encoding = encoding
        self.obj = factory()

    def feed(self, data: bytes) -> bytes:
        out = []
        try:
            while data:
                out.append(self.obj.decompress(data))  # type: ignore[attr-defined]
                if getattr(self.obj, "eof", False):
                    data = self.obj.unused_data  # type: ignore[attr-defined]
                    self.obj = self.factory()
                else:
                    data = b""
        except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
            raise ValueError(f"corrupt {self.encoding} data: {exc}") from exc
        return b"".join(out)

    def finish(self) -> bytes:
        return b""


class _Compress:
    def __init__(self, obj: object) -> None:
        self.obj = obj

    def feed(self, data: bytes) -> bytes:
        return self.obj.compress(data)  # type: ignore[attr-defined,no-any-return]

    def finish(self) -> bytes:
        return self.obj.flush()  # type: ignore[attr-defined,no-any-return]


class _ZstdDecompress:
    def __init__(self) -> None:
        import zstandard

        self.obj = zstandard.ZstdDecompressor().decompressobj()
        self.error = zstandard.ZstdError

    def feed(self, data: bytes) -> bytes:
        try:
            return self.obj.decompress(data)  # type: ignore[no-any-return]
        except self.error as exc:
            raise ValueError(f"corrupt zstd data: {exc}") from exc

    def finish(self) -> bytes:
        return b""


def decompressor(encoding: str) -> Transform:
    if encoding == "gzip":
        return _Decompress(lambda: zlib.decompressobj(wbits=47), encoding)
    if encoding == "xz":
        return _Decompress(lzma.LZMADecompressor, encoding)
    if encoding == "bz2":
        return _Decompress(bz2.BZ2Decompressor, encoding)
    if encoding == "zstd":
        return _ZstdDecompress()
    raise ValueError(f"unknown compression {encoding!r}")


def compressor(encoding: str) -> Transform:
    if encoding == "gzip":
        return _Compress(zlib.compressobj(6, zlib.DEFLATED, 31))
    if encoding == "xz":
        return _Compress(lzma.LZMACompressor())
    if encoding == "bz2":
        return _Compress(bz2.BZ2Compressor())
    if encoding == "zstd":
        import zstandard

        return _Compress(zstandard.ZstdCompressor().compressobj())
    raise ValueError(f"unknown compression {encoding!r}")


def reader(encoding: str | None, raw: BinaryIO) -> BinaryIO:
    """A file-like decoder over `raw` whose `read(n)` returns at most n bytes (bounded memory).

    Unlike `decompressor`, whose `feed` returns all the output of a chunk (a few KiB of xz or
    zstd can expand to gigabytes), this never holds more than one read's worth of output.
    """
    if encoding is None:
        return raw
    if encoding == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if encoding == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    if encoding == "bz2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if encoding == "zstd":
        import zstandard  # a declared dependency: Python 3.11's stdlib has no zstd

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[return-value]
    raise ValueError(f"unknown compression {encoding!r}")


def read_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a `reader` raises on corrupt or truncated input."""
    errors: list[type[BaseException]] = [EOFError, zlib.error, lzma.LZMAError, OSError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)
