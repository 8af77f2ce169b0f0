"""Byte streams: the one interface every driver stream and resource speaks.

`receive()` returns the next chunk (never empty) or `b""` at end of stream;
`send_eof()` half-closes our direction; `aclose()` tears everything down.
Chunk boundaries carry no meaning (PROTOCOL.md §5), except for datagram
drivers where one chunk is one datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol

CHUNK = 256 * 1024


class ByteStream(Protocol):
    async def receive(self) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...


class BlockingByteStream(Protocol):
    """A byte stream served in threads (a driver's synchronous `@exportstream`): same meaning, no loop.

    `receive()` and `send()` may run at once in two threads; `abort()` may come from a third
    and must wake both (they then fail or see the end).
    """

    def receive(self) -> bytes: ...

    def send(self, data: bytes) -> None: ...

    def send_eof(self) -> None: ...

    def abort(self) -> None: ...


class PipeEnd:
    """One end of an in-memory pipe with a bounded queue in each direction."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._eof_sent = False
        self._eof_seen = False

    async def receive(self) -> bytes:
        if self._eof_seen:
            return b""
        data = await self._inbox.get()
        if not data:
            self._eof_seen = True
        return data

    async def send(self, data: bytes) -> None:
        if self._eof_sent:
            raise BrokenPipeError("send after end of stream")
        if data:
            await self._outbox.put(data)

    async def send_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            await self._outbox.put(b"")

    async def aclose(self) -> None:
        # Never block on close: make room for the EOF marker if the peer stopped reading.
        if not self._eof_sent:
            self._eof_sent = True
            while self._outbox.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._outbox.get_nowait()
            self._outbox.put_nowait(b"")


def memory_pipe(depth: int = 16) -> tuple[PipeEnd, PipeEnd]:
    """Two connected ends; at most `depth` chunks wait in each direction (backpressure)."""
    a: asyncio.Queue[bytes] = asyncio.Queue(depth)
    b: asyncio.Queue[bytes] = asyncio.Queue(depth)
    return PipeEnd(a, b), PipeEnd(b, a)


class SocketStream:
    """A `ByteStream` over an asyncio (TCP or unix) connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def receive(self) -> bytes:
        try:
            return await self.reader.read(CHUNK)
        except ConnectionResetError:
            return b""

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_eof(self) -> None:
        if self.writer.can_write_eof() and not self.writer.is_closing():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()


class SocketConnection:
    """A `BlockingByteStream` over a connected plain socket; the opener closes it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self) -> bytes:
        try:
            return self.sock.recv(CHUNK)
        except ConnectionResetError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # wakes a recv or sendall blocked in another thread
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.abort()
        self.sock.close()


async def forward(a: ByteStream, b: ByteStream) -> None:
    """Copy both directions until both reached end of stream; EOF is passed on."""

    async def copy(src: ByteStream, dst: ByteStream) -> None:
        while data := await src.receive():
            await dst.send(data)
        await dst.send_eof()

    await asyncio.gather(copy(a, b), copy(b, a))
