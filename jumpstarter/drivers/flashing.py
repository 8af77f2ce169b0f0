"""The flash pipeline: stream, decompress, write (whole or bmap ranges), read back and compare.

Runs in one worker thread pulling from the client's resource stream through bounded
buffers (one 4 MiB block, the 1 MiB head, the decoder's window): memory stays flat
whatever the image size. The first MiB (partition table, boot sector) is zeroed first
and written last, so a card left by an error, a cancel or a dropped client never holds
a half-written image that looks bootable; `FlashIncomplete` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import stat
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jumpstarter import bmap as bmaps
from jumpstarter import compression

HEAD = 1024 * 1024
BLOCK = 4 * 1024 * 1024
POLL = 0.5  # seconds between checks of the abort flag while waiting for the client
_OPTION_KEYS = frozenset({"size", "verify", "bmap", "encoding"})


class FlashIncomplete(Exception):
    """The target holds a partial image (its first MiB is zeroed): do not boot from it."""


class BadImage(FlashIncomplete, ValueError):
    """The image itself is wrong (corrupt compressed data, not matching its bmap): INVALID_ARGUMENT."""


class FlashAborted(FlashIncomplete):
    """The flash was cancelled (Ctrl-C, a dropped client, the session ending)."""


@dataclass(frozen=True)
class FlashOptions:
    """What the client tells the exporter besides the bytes; on the wire a mapping of these keys."""

    size: int | None = None  # bytes the client will send: an early end of stream is then a drop
    verify: bool = True
    bmap: bmaps.Bmap | None = None
    encoding: str | None = None  # for http(s) sources; client streams name theirs in the handle

    @classmethod
    def from_value(cls, value: Any) -> FlashOptions:
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"flash options: expected a mapping, got {type(value).__name__}")
        unknown = set(value) - _OPTION_KEYS
        if unknown:
            raise ValueError(f"flash options: unknown {sorted(unknown)} (known: {sorted(_OPTION_KEYS)})")
        size = value.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0):
            raise ValueError(f"flash options: size must be a byte count, got {size!r}")
        verify = value.get("verify", True)
        if not isinstance(verify, bool):
            raise ValueError(f"flash options: verify must be true or false, got {verify!r}")
        text = value.get("bmap")
        if text is not None and not isinstance(text, str):
            raise ValueError("flash options: bmap must be the .bmap file's text")
        return cls(
            None if size is None else int(size),
            verify,
            None if text is None else bmaps.parse(text),
            compression.check(value.get("encoding")),
        )


@dataclass(frozen=True)
class Written:
    bytes: int  # image bytes (decompressed) read from the source
    written: int  # bytes written to the target (less than `bytes` with a bmap)
    verified: bool


class StreamSource(io.RawIOBase):
    """The client's bytes as a blocking file for the worker thread (pulled one chunk at a time)."""

    def __init__(
        self,
        receive: Callable[[], Coroutine[Any, Any, bytes]],
        loop: asyncio.AbstractEventLoop,
        abort: threading.Event,
        expected: int | None,
        limit: int,
    ) -> None:
        self._limit = limit  # wire bytes: endless input that decodes to nothing stops here too
        self._receive = receive
        self._loop = loop
        self._abort = abort
        self._expected = expected
        self._pending = memoryview(b"")  # a view: decoders read in small pieces, slicing bytes would copy
        self._eof = False
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending and not self._eof:
            self._pending = memoryview(self._fetch())
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _fetch(self) -> bytes:
        future = asyncio.run_coroutine_threadsafe(self._receive(), self._loop)
        while True:
            if self._abort.is_set():
                future.cancel()
                raise FlashAborted("flash cancelled")
            try:
                data: bytes = future.result(timeout=POLL)
                break
            except TimeoutError:
                continue
        if data:
            self.count += len(data)
            if self.count > self._limit:
                raise ValueError(f"the image source sent more than {self._limit} bytes")
            if self._expected is not None and self.count > self._expected:
                raise ValueError(f"the client sent more than the {self._expected} bytes it announced")
            return data
        self._eof = True
        if self._expected is not None and self.count != self._expected:
            raise FlashIncomplete(
                f"the stream ended after {self.count} of {self._expected} bytes (client gone?)"
            )
        return b""


def open_target(path: str) -> tuple[int, int | None]:
    """Open a file or block device for writing: (fd, capacity or None for a growable file)."""
    is_block = os.path.exists(path) and stat.S_ISBLK(os.stat(path).st_mode)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (0 if is_block else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    if not is_block:
        return fd, None
    return fd, os.lseek(fd, 0, os.SEEK_END)


class _Writer:
    """Writes image bytes at their offsets, holding back the head until `commit`."""

    def __init__(self, fd: int, capacity: int, bmap: bmaps.Bmap | None) -> None:
        self.fd = fd
        self.capacity = capacity
        self.head: list[tuple[int, bytes]] = []
        self.written = 0
        # what of the head to zero: all of it, or with a bmap only its mapped bytes (the rest is not ours)
        spans = [(r.start, min(r.end, HEAD)) for r in bmap.ranges if r.start < HEAD] if bmap else [(0, HEAD)]
        self.head_spans = [(lo, min(hi, capacity)) for lo, hi in spans if lo < capacity]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset + len(data) > self.capacity:
            raise ValueError(f"the image is larger than the target ({self.capacity} bytes)")
        if offset < HEAD:
            cut = HEAD - offset
            self.head.append((offset, bytes(data[:cut])))  # blocks are views of a reused buffer
            data, offset = data[cut:], HEAD
        if data:
            _pwrite_all(self.fd, data, offset)
            self.written += len(data)

    def zero_head(self, grown_only: bool = False) -> None:
        """Zero the head; `grown_only`: a regular file, never extended by this."""
        end = os.fstat(self.fd).st_size if grown_only else self.capacity
        for lo, hi in self.head_spans:
            if min(hi, end) > lo:
                _pwrite_all(self.fd, bytes(min(hi, end) - lo), lo)

    def commit(self) -> None:
        os.fsync(self.fd)  # everything else is on the card before the head makes it bootable
        for offset, data in self.head:
            _pwrite_all(self.fd, data, offset)
            self.written += len(data)
        os.fsync(self.fd)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def write_image(
    fd: int,
    source: StreamSource,
    options: FlashOptions,
    encoding: str | None,
    capacity: int,
    abort: threading.Event,
    growable: bool = False,
) -> Written:
    """The whole pipeline in the worker thread; on any failure the head is zeroed again.

    A `growable` target is a regular file, truncated when opened: its head is a hole already.
    """
    writer = _Writer(fd, capacity, options.bmap)
    hashing = ThreadPoolExecutor(1, thread_name_prefix="flash-sha256")
    if not growable:
        writer.zero_head()
    try:
        blocks = _blocks(compression.reader(encoding, source), encoding)  # type: ignore[arg-type]
        spans = _copy(blocks, writer, options.bmap, abort, hashing if options.verify else None)
        image_bytes = spans.pop()[1]
        if abort.is_set():
            raise FlashAborted("flash cancelled")
        if growable:
            os.ftruncate(fd, image_bytes)  # a sparse image's unmapped tail still counts
        writer.commit()
        if options.verify:
            _verify(fd, spans, abort, hashing)
        return Written(image_bytes, writer.written, options.verify)
    except BaseException:
        with contextlib.suppress(OSError):
            writer.zero_head(grown_only=growable)
            os.fsync(fd)
        raise
    finally:
        hashing.shutdown()


def _blocks(reader: Any, encoding: str | None) -> Iterator[memoryview]:
    """The decoded image in blocks (views of one reused buffer); a decoder's complaint becomes a clear error."""
    errors = compression.read_errors()
    view = memoryview(bytearray(BLOCK))
    while True:
        have = 0
        try:
            while have < BLOCK and (count := reader.readinto(view[have:])):
                have += count
        except errors as exc:
            if isinstance(exc, ConnectionError) or encoding is None:
                raise FlashIncomplete(f"the image source failed: {exc}") from None
            raise BadImage(f"corrupt {encoding} data: {exc}") from None
        if not have:
            return
        yield view[:have]


def _copy(
    blocks: Iterator[memoryview],
    writer: _Writer,
    bmap: bmaps.Bmap | None,
    abort: threading.Event,
    hashing: ThreadPoolExecutor | None,
) -> list[tuple[int, int, str]]:
    """Copy the image; returns the spans to verify (start, end, sha256), then (0, image bytes, "")."""
    pos = 0
    whole = hashlib.sha256()
    ranges = bmap.ranges if bmap else ()
    index, hasher = 0, hashlib.sha256()
    for block in blocks:
        if abort.is_set():
            raise FlashAborted("flash cancelled")
        end = pos + len(block)
        if bmap is None and hashing is not None:
            hashed = hashing.submit(whole.update, block)  # hashlib and pwrite release the GIL: in parallel
            writer.write(pos, block)
            hashed.result()
        elif bmap is None:
            writer.write(pos, block)
        while index < len(ranges) and ranges[index].start < end:
            span = ranges[index]
            lo, hi = max(span.start, pos), min(span.end, end)
            piece = block[lo - pos : hi - pos]
            hasher.update(piece)
            writer.write(lo, piece)
            if span.end > end:
                break
            if hasher.hexdigest() != span.sha256:
                raise BadImage(f"the image does not match its bmap: bytes {span.start}-{span.end}")
            index, hasher = index + 1, hashlib.sha256()
        pos = end
    if bmap is not None:
        if pos != bmap.image_size or index != len(ranges):
            raise ValueError(f"the image has {pos} bytes, its bmap says {bmap.image_size}")
        return [(r.start, r.end, r.sha256) for r in ranges] + [(0, pos, "")]
    return [(0, pos, whole.hexdigest()), (0, pos, "")]


def _verify(
    fd: int, spans: list[tuple[int, int, str]], abort: threading.Event, hashing: ThreadPoolExecutor
) -> None:
    """Read back what was written (from the device, not the page cache) and compare sha256."""
    with contextlib.suppress(OSError):  # not every file system honours it; the card path does
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    for start, end, expected in spans:
        digest, offset = hashlib.sha256(), start
        hashed: Future[None] | None = None
        while offset < end:
            if abort.is_set():
                raise FlashAborted("flash cancelled during verification")
            data = os.pread(fd, min(BLOCK, end - offset), offset)  # while the previous block hashes
            if hashed is not None:
                hashed.result()
            if not data:
                break
            hashed = hashing.submit(digest.update, data)
            offset += len(data)
        if hashed is not None:
            hashed.result()
        if digest.hexdigest() != expected:
            raise FlashIncomplete(
                f"verification failed: bytes {start}-{end} read back differ from what was written"
            )


async def flash_file(
    path: str,
    stream: Any,
    options: FlashOptions,
    encoding: str | None,
    max_bytes: int,
) -> tuple[Written, float]:
    """Flash `stream` into `path` in a worker thread; cancelling stops it cleanly (head zeroed)."""
    loop = asyncio.get_running_loop()
    abort = threading.Event()
    started = time.monotonic()
    fd, capacity = await asyncio.to_thread(open_target, path)
    limit = min(capacity or max_bytes, max_bytes)
    source = StreamSource(stream.receive, loop, abort, options.size, limit + limit // 16 + HEAD)

    def run() -> Written:
        try:
            return write_image(fd, source, options, encoding, limit, abort, growable=capacity is None)
        finally:
            os.close(fd)

    worker = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        written = await asyncio.shield(worker)
    except asyncio.CancelledError:
        abort.set()  # the thread notices within POLL seconds, zeroes the head and closes the file
        with contextlib.suppress(BaseException):
            await wait_uncancellable(worker)
        raise
    return written, time.monotonic() - started


async def wait_uncancellable(task: asyncio.Future[Any]) -> None:
    """Wait for `task` even if we are cancelled meanwhile: hardware must settle before anything moves on."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.exception() if not task.cancelled() else None
