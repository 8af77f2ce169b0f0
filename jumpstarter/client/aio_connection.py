"""The asyncio connection to one exporter session (`AsyncConnection`) and its byte streams.

async with jumpstarter.connect_async("/run/jumpstarter/boards/rpi4.sock") as board:
    await board.power.call_async("on")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
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


class AsyncConnection:
    """An asyncio connection to one exporter session."""

    def __init__(self, target: str) -> None:
        self.target = target
        #: The session the client tree was built from (set by `build_tree`).
        self.pin: SessionPin | None = None
        self.channel, self.metadata = channels.open_aio_channel(target)
        self._md = tuple(self.metadata) or None
        self._rpc = jumpstarter_pb2_grpc.ExporterServiceStub(self.channel)
        self._router = wire.router_stream(self.channel)

    async def report(self, timeout: float | None = 10) -> jumpstarter_pb2.GetReportResponse:
        try:
            return await self._rpc.GetReport(  # type: ignore[no-any-return]
                empty_pb2.Empty(), metadata=self._md, timeout=timeout
            )
        except grpc.RpcError as exc:
            raise wire.report_error(exc, self.target) from None

    async def _checked(self, error: JumpstarterError, what: str, uuid: str | None) -> JumpstarterError:
        """`error`, or `BoardRestarted` when it is a NOT_FOUND because the exporter's session changed."""
        if self.pin is None or not self.pin.suspects(error, uuid):
            return error
        with contextlib.suppress(JumpstarterError):  # no report: the error stands
            return self.pin.verdict(error, what, await self.report(timeout=REPORT_TIMEOUT))
        return error

    async def call(self, uuid: str, method: str, args: Iterable[Any]) -> Any:
        try:
            response = await self._rpc.DriverCall(wire.driver_call(uuid, method, args), metadata=self._md)
        except grpc.RpcError as exc:
            raise await self._checked(from_rpc(exc, method), method, uuid) from None
        return wire.result(response)

    async def streaming_call(self, uuid: str, method: str, args: Iterable[Any]) -> AsyncIterator[Any]:
        call = self._rpc.StreamingDriverCall(wire.streaming_call(uuid, method, args), metadata=self._md)
        try:
            async for response in call:
                yield wire.result(response)
        except grpc.RpcError as exc:
            raise await self._checked(from_rpc(exc, method), method, uuid) from None
        finally:
            call.cancel()

    @contextlib.asynccontextmanager
    async def open_stream(self, request: dict[str, Any]) -> AsyncIterator[AsyncStream]:
        call = self._router(metadata=wire.stream_metadata(request, self.metadata))
        what = wire.stream_name(request)
        try:
            initial = await call.initial_metadata()
        except grpc.RpcError as exc:
            raise await self._checked(from_rpc(exc, what), what, request.get("uuid")) from None
        if not initial:  # see wire.UNMARKED_STREAM_GRACE
            try:
                code = await asyncio.wait_for(asyncio.shield(call.code()), wire.UNMARKED_STREAM_GRACE)
            except TimeoutError:
                code = grpc.StatusCode.OK
            if code != grpc.StatusCode.OK:
                error = error_for(code, await call.details(), what)
                raise await self._checked(error, what, request.get("uuid")) from None
        stream = AsyncStream(call, dict(initial or ()))
        try:
            yield stream
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()


class AsyncStream:
    """A `ByteStream` over a session-level `RouterService.Stream` (asyncio API)."""

    def __init__(self, call: Any, initial_metadata: dict[str, Any]) -> None:
        self._call = call
        self.initial_metadata = initial_metadata
        self._eof_seen = False
        self._eof_sent = False

    async def receive(self) -> bytes:
        while not self._eof_seen:
            try:
                frame = await self._call.read()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    break
                raise from_rpc(exc, "stream") from None
            if frame is grpc.aio.EOF or (data := frames.content(frame)) is None:
                break
            if data:
                return data
        self._eof_seen = True
        return b""

    async def send(self, data: bytes) -> None:
        if self._eof_sent:
            raise BrokenPipeError("send after end of stream")
        await self._call.write(frames.Frame(bytes(data)))

    async def send_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            with contextlib.suppress(grpc.RpcError):
                await self._call.write(frames.Frame(b"", frames.GOAWAY))
                await self._call.done_writing()

    async def aclose(self) -> None:
        self._call.cancel()

    def resource_handle(self) -> dict[str, Any]:
        return wire.resource_handle(self.initial_metadata)


@contextlib.asynccontextmanager
async def connect_async(target: str | None = None) -> AsyncIterator[DriverClient]:
    """asyncio flavour of `connect`: the clients' `*_async` methods use this connection."""
    from jumpstarter.client.tree import build_tree

    connection = AsyncConnection(target or channels.default_target())
    try:
        yield build_tree(await connection.report(), None, connection)
    finally:
        await connection.close()
