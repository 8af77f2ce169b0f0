"""Every end of a byte stream reads frames the same way: the session pump, `splice`, both clients.

A scripted peer sends DATA, PING and unknown frames (with junk payloads), an empty DATA, GOAWAY
and then more DATA: every end must yield exactly the DATA bytes before GOAWAY, then EOF. A peer
that sends RST_STREAM must surface as a ConnectionResetError. Real gRPC over unix sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from jumpstarter import frames
from jumpstarter.client import wire
from jumpstarter.client.aio_connection import AsyncConnection
from jumpstarter.client.connection import Connection
from jumpstarter.drivers.composite import Composite
from jumpstarter.drivers.network import EchoNetwork, TcpNetwork
from jumpstarter.session.local import LocalServer
from jumpstarter.splice import splice

Frame = frames.Frame
PING = 6
CLEAN = [
    Frame(b"a"),
    Frame(b"ping junk", PING),
    Frame(b"unknown junk", 5),
    Frame(b""),
    Frame(b"b"),
    Frame(b"", frames.GOAWAY),
    Frame(b"after goaway"),
]
RESET = [Frame(b"a"), Frame(b"", frames.RST_STREAM), Frame(b"after reset")]
REQUEST = {"kind": "driver", "uuid": "u", "method": "connect"}


@contextlib.contextmanager
def scripted_peer(path: str, script: list[Frame]) -> Iterator[str]:
    """A real gRPC server whose every `RouterService.Stream` sends `script`, then ends OK.

    It ends when the caller half-closes (as the router does), so a caller's own writes never
    meet a finished call.
    """

    def stream(requests: Any, context: grpc.ServicerContext) -> Iterator[Frame]:
        context.send_initial_metadata((("x-jumpstarter-stream-open", "1"),))
        yield from script
        for _ in requests:
            pass

    handler = grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=frames.decode, response_serializer=frames.encode
    )
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("jumpstarter.v1.RouterService", {"Stream": handler}),)
    )
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        yield path
    finally:
        server.stop(None)


def test_blocking_client_stream(tmp_path):
    with scripted_peer(str(tmp_path / "clean.sock"), CLEAN) as path:
        connection = Connection(path)
        with connection.open_stream(REQUEST) as stream:
            assert b"".join(stream) == b"ab"
            assert stream.receive() == b""
        connection.close()
    with scripted_peer(str(tmp_path / "reset.sock"), RESET) as path:
        connection = Connection(path)
        with connection.open_stream(REQUEST) as stream:
            assert stream.receive() == b"a"
            with pytest.raises(ConnectionResetError, match="the exporter reset the stream"):
                stream.receive()
        connection.close()


def test_asyncio_client_stream(tmp_path):
    async def receive_all(path: str) -> bytes:
        connection = AsyncConnection(path)
        try:
            async with connection.open_stream(REQUEST) as stream:
                received = b""
                while data := await stream.receive():
                    received += data
                assert await stream.receive() == b""
                return received
        finally:
            await connection.close()

    with scripted_peer(str(tmp_path / "clean.sock"), CLEAN) as path:
        assert asyncio.run(receive_all(path)) == b"ab"
    with scripted_peer(str(tmp_path / "reset.sock"), RESET) as path:
        with pytest.raises(ConnectionResetError, match="the exporter reset the stream"):
            asyncio.run(receive_all(path))


def test_splice_delivers_data_until_goaway_then_half_closes_the_local_socket(tmp_path):
    async def scenario(path: str) -> bytes:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        channel = grpc.aio.insecure_channel(f"unix:{path}")
        local = await asyncio.open_connection(sock=theirs)
        local[1].write_eof()  # nothing to send: splice sends GOAWAY and waits for the other way
        try:
            call = wire.router_stream(channel)(metadata=wire.stream_metadata(REQUEST, ()))
            await asyncio.wait_for(splice(reader, writer, call), 60)
            return await asyncio.wait_for(local[0].read(), 60)  # to EOF: splice half-closed it
        finally:
            writer.close()
            local[1].close()
            await channel.close()

    with scripted_peer(str(tmp_path / "clean.sock"), CLEAN) as path:
        assert asyncio.run(scenario(path)) == b"ab"


def test_session_pump_feeds_the_driver_only_data_and_ends_at_goaway_or_reset(tmp_path):
    def echo_of(path: str, script: list[Frame]) -> tuple[bytes, grpc.StatusCode, str]:
        report = Connection(path).report()
        echo = next(r.uuid for r in report.reports if r.labels.get("jumpstarter.dev/name") == "echo")
        with grpc.insecure_channel(f"unix:{path}") as channel:
            request = {"kind": "driver", "uuid": echo, "method": "connect"}
            call = wire.router_stream(channel)(iter(script), metadata=wire.stream_metadata(request, ()))
            received = b""
            with contextlib.suppress(grpc.RpcError):
                for frame in call:
                    if (data := frames.content(frame)) is None:
                        break
                    received += data
            return received, call.code(), call.details()

    with LocalServer(lambda: Composite(children={"echo": EchoNetwork()})) as path:
        assert echo_of(path, CLEAN)[0] == b"ab"
        _, code, details = echo_of(path, RESET)
        assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "the client reset the stream")
    # The same through a blocking byte stream (TcpNetwork: a plain socket served in gRPC's threads).
    with (
        tcp_echo() as port,
        LocalServer(lambda: Composite(children={"echo": TcpNetwork(host="127.0.0.1", port=port)})) as path,
    ):
        assert echo_of(path, CLEAN)[0] == b"ab"
        _, code, details = echo_of(path, RESET)
        assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "the client reset the stream")


@contextlib.contextmanager
def tcp_echo() -> Iterator[int]:
    """A plain-socket TCP echo service on loopback (one thread per connection); its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
