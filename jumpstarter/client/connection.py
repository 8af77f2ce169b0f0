"""The blocking connection to one exporter session (`Connection`) and its byte streams.

`connect(target)` returns the root client of the board's driver tree:

    with jumpstarter.connect("/run/jumpstarter/boards/rpi4.sock") as board:
        board.power.on()

The asyncio flavour (`AsyncConnection`, `connect_async`) lives in `aio_connection.py`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from jumpstarter import channels, frames
from jumpstarter.client import wire
from jumpstarter.client.restart import REPORT_TIMEOUT, SessionPin
from jumpstarter.errors import JumpstarterError, error_for, from_rpc
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

if TYPE_CHECKING:
    from jumpstarter.client.base import DriverClient


class Connection:
    """A blocking connection to one exporter session."""

    def __init__(self, target: str) -> None:
        self.target = target
        #: The session the client tree was built from (set by `build_tree`).
        self.pin: SessionPin | None = None
        self.channel, self.metadata = channels.open_channel(target)
        self._md = tuple(self.metadata) or None
        self._rpc = jumpstarter_pb2_grpc.ExporterServiceStub(self.channel)
        self._router = wire.router_stream(self.channel)

    # -- session-level RPCs ------------------------------------------------

    def report(self, timeout: float | None = 10) -> jumpstarter_pb2.GetReportResponse:
        try:
            return self._rpc.GetReport(  # type: ignore[no-any-return]
                empty_pb2.Empty(), metadata=self._md, timeout=timeout, wait_for_ready=False
            )
        except grpc.RpcError as exc:
            raise wire.report_error(exc, self.target) from None

    def status(self, timeout: float | None = None) -> jumpstarter_pb2.GetStatusResponse:
        """The exporter's status; a frozen exporter gives DriverTimeout after `timeout` seconds."""
        try:
            return self._rpc.GetStatus(jumpstarter_pb2.GetStatusRequest(), metadata=self._md, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc(exc, "GetStatus") from None

    def end_session(self) -> jumpstarter_pb2.EndSessionResponse:
        try:
            return self._rpc.EndSession(jumpstarter_pb2.EndSessionRequest(), metadata=self._md, timeout=5)
        except grpc.RpcError as exc:
            raise from_rpc(exc, "EndSession") from None

    def logs(self, on_open: Callable[[], None] | None = None) -> Iterator[jumpstarter_pb2.LogStreamResponse]:
        """Every log record of the exporter from now on (until the iterator is closed).

        `on_open` is called once the exporter collects records for this stream (our exporters
        say so in the headers; upstream ones send headers with their first record).
        """
        call = self._rpc.LogStream(empty_pb2.Empty(), metadata=self._md)
        try:
            if on_open is not None:
                call.initial_metadata()
                on_open()
            yield from call
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED and "Cancelling all calls" not in (
                exc.details() or ""
            ):
                raise from_rpc(exc, "LogStream") from None
        finally:
            call.cancel()

    # -- driver calls ------------------------------------------------------

    def _checked(self, error: JumpstarterError, what: str, uuid: str | None) -> JumpstarterError:
        """`error`, or `BoardRestarted` when it is a NOT_FOUND because the exporter's session changed."""
        if self.pin is None or not self.pin.suspects(error, uuid):
            return error
        with contextlib.suppress(JumpstarterError):  # no report: the error stands
            return self.pin.verdict(error, what, self.report(timeout=REPORT_TIMEOUT))
        return error

    def call(self, uuid: str, method: str, args: Iterable[Any]) -> Any:
        try:
            response = self._rpc.DriverCall(wire.driver_call(uuid, method, args), metadata=self._md)
        except grpc.RpcError as exc:
            raise self._checked(from_rpc(exc, method), method, uuid) from None
        return wire.result(response)

    def streaming_call(self, uuid: str, method: str, args: Iterable[Any]) -> Iterator[Any]:
        call = self._rpc.StreamingDriverCall(wire.streaming_call(uuid, method, args), metadata=self._md)
        try:
            for response in call:
                yield wire.result(response)
        except grpc.RpcError as exc:
            raise self._checked(from_rpc(exc, method), method, uuid) from None
        finally:
            call.cancel()

    def open_stream(self, request: dict[str, Any]) -> BlockingStream:
        try:
            return BlockingStream(self, request)
        except JumpstarterError as error:
            raise self._checked(error, wire.stream_name(request), request.get("uuid")) from None

    @contextlib.contextmanager
    def upload(
        self, uuid: str, source: Iterable[bytes], encoding: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stream `source` chunks to driver `uuid` as a resource; yields the handle to pass to a call.

        The chunks are sent while the caller's driver call runs; leaving the
        block waits until everything was sent.
        """
        stream = self.open_stream({"kind": "resource", "uuid": uuid, "x_jmp_content_encoding": encoding})
        handle = stream.resource_handle()
        failure: list[BaseException] = []

        def feed() -> None:
            try:
                for chunk in source:
                    stream.send(chunk)
                stream.send_eof()
            except BaseException as exc:  # reported after the call
                failure.append(exc)

        sender = threading.Thread(target=feed, daemon=True, name="upload")
        sender.start()
        try:
            yield handle
        finally:
            stream.close()
            sender.join()
        if failure and not isinstance(failure[0], (BrokenPipeError, ConnectionError)):
            raise failure[0]

    @contextlib.contextmanager
    def download(
        self, uuid: str, encoding: str | None = None
    ) -> Iterator[tuple[dict[str, Any], BlockingStream]]:
        """A resource the driver writes into; read it from the yielded stream while the call runs."""
        stream = self.open_stream({"kind": "resource", "uuid": uuid, "x_jmp_content_encoding": encoding})
        try:
            yield stream.resource_handle(), stream
        finally:
            stream.close()

    def close(self) -> None:
        self.channel.close()


class BlockingStream:
    """A byte stream over a session-level `RouterService.Stream` (blocking API)."""

    def __init__(self, connection: Connection, request: dict[str, Any], depth: int = 8) -> None:
        self._outgoing: queue.Queue[frames.Frame | None] = queue.Queue(depth)
        metadata = wire.stream_metadata(request, connection.metadata)
        self._call = connection._router(self._frames(), metadata=metadata)
        self._eof_sent = False
        self._eof_seen = False
        self._closed = False
        what = wire.stream_name(request)
        try:
            try:
                self.initial_metadata = dict(self._call.initial_metadata())
            except grpc.RpcError as exc:
                raise from_rpc(exc, what) from None
            if not self.initial_metadata:  # see wire.UNMARKED_STREAM_GRACE
                finished = threading.Event()
                self._call.add_done_callback(lambda *_: finished.set())
                if finished.wait(wire.UNMARKED_STREAM_GRACE) and self._call.code() != grpc.StatusCode.OK:
                    raise error_for(self._call.code(), self._call.details(), what)
        except BaseException:
            self.close()  # ends gRPC's request thread, which would wait on our queue forever
            raise

    def _frames(self) -> Iterator[frames.Frame]:
        while (frame := self._outgoing.get()) is not None:
            yield frame

    def resource_handle(self) -> dict[str, Any]:
        return wire.resource_handle(self.initial_metadata)

    def send(self, data: bytes) -> None:
        frame = frames.Frame(bytes(data))
        while True:
            if self._eof_sent or self._closed:
                raise BrokenPipeError("send after end of stream")
            if self._call.done():
                code = self._call.code()
                if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                    raise BrokenPipeError("the stream was closed by the exporter")
                raise BrokenPipeError(str(error_for(code, self._call.details(), "send")))
            try:
                self._outgoing.put(frame, timeout=0.2)  # re-check liveness while backpressured
                return
            except queue.Full:
                continue

    def send_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            self._outgoing.put(frames.Frame(b"", frames.GOAWAY))
            self._outgoing.put(None)

    def receive(self) -> bytes:
        """The next chunk, or b"" at end of stream."""
        while not self._eof_seen:
            try:
                frame = next(self._call)
            except StopIteration:
                break
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and self._closed:
                    break
                raise from_rpc(exc, "stream") from None
            if (data := frames.content(frame)) is None:
                break
            if data:
                return data
        self._eof_seen = True
        return b""

    def __iter__(self) -> Iterator[bytes]:
        while data := self.receive():
            yield data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._eof_sent:
            self._eof_sent = True
            with contextlib.suppress(queue.Full):
                self._outgoing.put_nowait(None)
        if not self._call.done():
            self._call.cancel()

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def connect(target: str | None = None) -> Iterator[DriverClient]:
    """Connect to an exporter session (socket path or JUMPSTARTER_HOST); yields the root client."""
    from jumpstarter.client.tree import build_tree

    connection = Connection(target or channels.default_target())
    try:
        yield build_tree(connection.report(), connection)
    finally:
        connection.close()
