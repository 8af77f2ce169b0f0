"""Network drivers: a TCP/UDP/unix service near the board, reached through the exporter.

Also `EchoNetwork` (echoes what it receives) and `DiscardNetwork` (swallows it),
for testing links and measuring throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

from jumpstarter.driver import Driver, export, exportstream
from jumpstarter.interfaces.network import NetworkInterface
from jumpstarter.streams import PipeEnd, SocketConnection, SocketStream

CONNECT_TIMEOUT = 10.0


class TcpNetwork(NetworkInterface, Driver):
    """A TCP service (SSH on the board, a web UI, a debugger port).

    Config: `host`, `port`, `enable_address` (allow clients to learn the address, default true).
    """

    def __init__(self, *, host: str, port: int, enable_address: bool = True, **base: Any) -> None:
        super().__init__(**base)
        self.host = str(host)
        self.port = int(port)
        self.enable_address = bool(enable_address)

    # Blocking: served in gRPC's threads over a plain socket, no event-loop hop per frame.
    @exportstream
    def connect(self) -> Iterator[SocketConnection]:  # type: ignore[override]
        """Open one TCP connection to the service."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise ConnectionError(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # interactive use (ssh), as asyncio does
        stream = SocketConnection(sock)
        try:
            yield stream
        finally:
            stream.close()

    @export
    async def address(self) -> str:
        """tcp://HOST:PORT of the service, as the exporter resolves it."""
        if not self.enable_address:
            raise ValueError("this exporter does not publish the service address")
        infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        host = infos[0][4][0] if infos else self.host
        return f"tcp://{host}:{self.port}"


class UnixNetwork(NetworkInterface, Driver):
    """A unix socket service on the lab host. Config: `path`."""

    def __init__(self, *, path: str, **base: Any) -> None:
        super().__init__(**base)
        self.path = str(path)

    @exportstream
    async def connect(self) -> AsyncIterator[SocketStream]:
        """Open one connection to the socket."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        stream = SocketStream(reader, writer)
        try:
            yield stream
        finally:
            await stream.aclose()


class _DatagramStream(asyncio.DatagramProtocol):
    """One chunk = one datagram, both ways."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(256)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.queue.full() and data:
            self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        return None  # ICMP errors on a connected UDP socket: the next datagram may work

    async def receive(self) -> bytes:
        return await self.queue.get()

    async def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(b"")


class UdpNetwork(NetworkInterface, Driver):
    """A UDP service; datagram boundaries are kept. Config: `host`, `port`, `enable_address`."""

    def __init__(self, *, host: str, port: int, enable_address: bool = True, **base: Any) -> None:
        super().__init__(**base)
        self.host = str(host)
        self.port = int(port)
        self.enable_address = bool(enable_address)

    @exportstream
    async def connect(self) -> AsyncIterator[_DatagramStream]:
        """A connected UDP socket to the service."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(_DatagramStream, remote_addr=(self.host, self.port))
        try:
            yield protocol
        finally:
            await protocol.aclose()

    @export
    def address(self) -> str:  # never waits: answered in the gRPC worker thread
        """udp://HOST:PORT of the service."""
        if not self.enable_address:
            raise ValueError("this exporter does not publish the service address")
        return f"udp://{self.host}:{self.port}"


class EchoNetwork(NetworkInterface, Driver):
    """A loopback service: every connection echoes back what it receives."""

    @exportstream
    async def connect(self) -> AsyncIterator[PipeEnd]:
        """Open an echoing stream."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(2)  # bounded: the sender waits for the reader
        yield PipeEnd(queue, queue)


class _Discard:
    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def receive(self) -> bytes:
        await self.done.wait()
        return b""

    async def send(self, data: bytes) -> None:
        return None

    async def send_eof(self) -> None:
        self.done.set()

    async def aclose(self) -> None:
        self.done.set()


class DiscardNetwork(NetworkInterface, Driver):
    """A sink: swallows everything sent to it; ends its side when the client does."""

    @exportstream
    async def connect(self) -> AsyncIterator[_Discard]:
        """Open a stream into the void."""
        yield _Discard()
