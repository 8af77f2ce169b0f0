"""The session on gRPC's thread-pool server: where driver methods run, and what an ended call cancels.

Real gRPC on a unix socket (LocalServer), real sockets for the TCP service.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from jumpstarter import frames
from jumpstarter.client import wire
from jumpstarter.client.connection import Connection
from jumpstarter.driver import Driver, export, exportstream
from jumpstarter.drivers.composite import Composite
from jumpstarter.drivers.network import TcpNetwork
from jumpstarter.session.local import LocalServer
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

DEADLINE = 30.0
HANG = 10.0  # seconds: a call still running after this would never end


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Probe(Driver):
    """Records which thread ran what, and whether an abandoned coroutine was cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.threads: dict[str, int] = {}
        self.started = threading.Event()
        self.cancelled = threading.Event()

    @export
    def wait_for_gate(self) -> str:
        """Blocks its thread until `open_gate` (an async method, on the loop) runs."""
        self.threads["sync"] = threading.get_ident()
        if not self.gate.wait(DEADLINE):
            raise TimeoutError("the gate never opened: the loop was blocked")
        return "passed"

    @export
    async def open_gate(self) -> None:
        self.threads["async"] = threading.get_ident()
        self.gate.set()

    @export
    async def sleep_forever(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    @export
    async def tick(self) -> AsyncIterator[int]:
        self.started.set()
        try:
            n = 0
            while True:
                yield n
                n += 1
                await asyncio.sleep(0.01)
        finally:
            self.cancelled.set()

    @export
    async def cancelled_midway(self) -> AsyncIterator[int]:
        """A generator cancelled by something on the exporter (an awaited task cancelled under it)."""
        yield 0
        raise asyncio.CancelledError()

    @exportstream
    async def cancelled_open(self) -> AsyncIterator[object]:
        """A byte stream whose opening is cancelled by something on the exporter."""
        raise asyncio.CancelledError()
        yield  # an async generator


@pytest.fixture
def probe() -> Iterator[tuple[str, Probe]]:
    made: list[Probe] = []

    def build() -> Driver:
        made.append(Probe())
        return Composite(children={"probe": made[0]})

    with LocalServer(build) as path:
        yield path, made[0]


def test_a_blocking_sync_method_runs_in_a_worker_thread_and_leaves_the_loop_free(probe):
    path, driver = probe
    connection = Connection(path)
    try:
        result: list[str] = []
        caller = threading.Thread(
            target=lambda: result.append(connection.call(driver.uuid, "wait_for_gate", []))
        )
        caller.start()
        wait_for(lambda: "sync" in driver.threads, "the sync method to start")
        connection.call(driver.uuid, "open_gate", [])  # answered on the loop while the sync method blocks
        caller.join(DEADLINE)
        assert result == ["passed"]
        assert driver.threads["sync"] != driver.threads["async"]
    finally:
        connection.close()


def test_an_async_call_whose_deadline_passes_is_cancelled_on_the_loop(probe):
    path, driver = probe
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
        request = jumpstarter_pb2.DriverCallRequest(uuid=driver.uuid, method="sleep_forever")
        with pytest.raises(grpc.RpcError) as raised:
            stub.DriverCall(request, timeout=1.0)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert driver.started.is_set()
        wait_for(driver.cancelled.is_set, "the driver's coroutine to be cancelled")


def test_a_streaming_call_the_client_cancels_stops_the_async_generator(probe):
    path, driver = probe
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
        call = stub.StreamingDriverCall(
            jumpstarter_pb2.StreamingDriverCallRequest(uuid=driver.uuid, method="tick")
        )
        first = next(call)
        assert first.result.number_value == 0
        call.cancel()
        wait_for(driver.cancelled.is_set, "the driver's generator to be closed")


def test_a_streaming_call_cancelled_on_the_exporter_ends_instead_of_hanging(probe):
    path, driver = probe
    with grpc.insecure_channel(f"unix:{path}") as channel:
        stub = jumpstarter_pb2_grpc.ExporterServiceStub(channel)
        request = jumpstarter_pb2.StreamingDriverCallRequest(uuid=driver.uuid, method="cancelled_midway")
        call = stub.StreamingDriverCall(request, timeout=HANG)
        assert next(call).result.number_value == 0
        with pytest.raises(grpc.RpcError) as raised:
            next(call)
        assert raised.value.code() == grpc.StatusCode.CANCELLED  # not DEADLINE_EXCEEDED: it ended at once


def test_a_byte_stream_whose_opening_is_cancelled_on_the_exporter_ends_instead_of_hanging(probe):
    path, driver = probe
    with grpc.insecure_channel(f"unix:{path}") as channel:
        request = {"kind": "driver", "uuid": driver.uuid, "method": "cancelled_open"}
        call = wire.router_stream(channel)(iter(()), metadata=wire.stream_metadata(request, ()), timeout=HANG)
        with pytest.raises(grpc.RpcError) as raised:
            call.initial_metadata()  # a client waits here for the stream to open
            next(call)
        assert raised.value.code() == grpc.StatusCode.CANCELLED  # not DEADLINE_EXCEEDED: it ended at once


@contextlib.contextmanager
def tcp_service() -> Iterator[tuple[int, list[socket.socket], threading.Event]]:
    """A TCP service that uppercases until EOF, then answers and closes; also sees when peers go away."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    gone = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            received = b""
            try:
                while data := conn.recv(65536):
                    received += data
            except ConnectionResetError:
                pass
            if not received.endswith(b"!"):  # a peer that went away without finishing its message
                gone.set()
                return
            conn.sendall(received.upper())
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted, gone
    finally:
        listener.close()


def test_tcp_stream_passes_end_of_stream_both_ways(tmp_path):
    with (
        tcp_service() as (port, _, _),
        LocalServer(lambda: Composite(children={"tcp": TcpNetwork(host="127.0.0.1", port=port)})) as path,
    ):
        connection = Connection(path)
        try:
            uuid = next(
                r.uuid for r in connection.report().reports if r.labels.get("jumpstarter.dev/name") == "tcp"
            )
            with connection.open_stream({"kind": "driver", "uuid": uuid, "method": "connect"}) as stream:
                for chunk in (b"hello ", b"board" * 100_000, b"!"):
                    stream.send(chunk)
                stream.send_eof()  # the service answers only after our EOF reached it
                assert b"".join(stream) == b"HELLO " + b"BOARD" * 100_000 + b"!"
        finally:
            connection.close()


def test_a_tcp_stream_the_client_abandons_closes_the_service_connection(tmp_path):
    with (
        tcp_service() as (port, accepted, gone),
        LocalServer(lambda: Composite(children={"tcp": TcpNetwork(host="127.0.0.1", port=port)})) as path,
    ):
        report = Connection(path).report()
        uuid = next(r.uuid for r in report.reports if r.labels.get("jumpstarter.dev/name") == "tcp")
        with grpc.insecure_channel(f"unix:{path}") as channel:
            request = {"kind": "driver", "uuid": uuid, "method": "connect"}
            sent = threading.Event()
            release = threading.Event()

            def frames_out() -> Iterator[frames.Frame]:
                yield frames.Frame(b"half a message")
                sent.set()
                release.wait(DEADLINE)  # no GOAWAY, no half-close: the call is cancelled under it

            call = wire.router_stream(channel)(frames_out(), metadata=wire.stream_metadata(request, ()))
            try:
                wait_for(lambda: accepted and sent.is_set(), "the stream to reach the service")
                call.cancel()
                wait_for(gone.is_set, "the service to see its connection end")
            finally:
                release.set()
