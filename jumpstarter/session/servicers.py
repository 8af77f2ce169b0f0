"""`ExporterService` and `RouterService` of a session, answered in gRPC's worker threads.

A driver's synchronous methods run right here, in the worker thread (as they ran in a
thread before); its async methods and byte streams run on the session's event loop through
`LoopBridge`, and are cancelled when the call ends early.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias

import grpc
import structlog

from jumpstarter import values
from jumpstarter.driver.base import Driver
from jumpstarter.driver.decorators import BYTESTREAM, STREAMING, UNARY
from jumpstarter.errors import status_for
from jumpstarter.session.blocking import stream_blocking
from jumpstarter.session.bridge import Cancelled, LoopBridge
from jumpstarter.session.core import OPEN_MARKER, Session, SessionSlot, fresh_uuid
from jumpstarter.streams import ByteStream, memory_pipe
from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

log = structlog.get_logger("session")
Context: TypeAlias = grpc.ServicerContext


def _abort(context: Context, exc: BaseException, what: str) -> None:  # context.abort raises
    if isinstance(exc, Cancelled) or not context.is_active():  # the client is gone: nobody to tell
        context.abort(grpc.StatusCode.CANCELLED, "call cancelled")
    code, message = status_for(exc)
    if code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        log.warning("driver call failed", call=what, code=code.name, error=message)
    context.abort(code, message)


class _SlotServicer:
    """Answers from the session the slot holds now (exporterd swaps in a fresh one per lease)."""

    def __init__(self, slot: SessionSlot, bridge: LoopBridge) -> None:
        self.slot = slot
        self.bridge = bridge

    @property
    def session(self) -> Session:
        return self.slot.current


class ExporterServicer(_SlotServicer, jumpstarter_pb2_grpc.ExporterServiceServicer):
    def GetReport(self, request: Any, context: Context) -> Any:
        return self.session.report()

    def _prepare(self, request: Any, kind: str) -> tuple[Callable[..., Any], list[Any], bool]:
        session = self.session
        session.check_ready()
        function, binder, is_async = session.method(request.uuid, request.method, kind)
        wire = request.args
        args = binder.bind([values.decode(a) for a in wire] if wire else [])
        return function, args, is_async

    def DriverCall(self, request: Any, context: Context) -> Any:
        try:
            function, args, is_async = self._prepare(request, UNARY)
            result = self.bridge.run(function(*args), context) if is_async else function(*args)
            response = jumpstarter_pb2.DriverCallResponse(uuid=fresh_uuid())
            values.encode_into(response.result, result)
            return response
        except Exception as exc:
            _abort(context, exc, request.method)

    def StreamingDriverCall(self, request: Any, context: Context) -> Iterator[Any]:
        try:
            function, args, is_async = self._prepare(request, STREAMING)
            items = self.bridge.iterate(function(*args), context) if is_async else function(*args)
            for item in items:
                response = jumpstarter_pb2.StreamingDriverCallResponse(uuid=fresh_uuid())
                values.encode_into(response.result, item)
                yield response
        except Exception as exc:
            _abort(context, exc, request.method)

    def LogStream(self, request: Any, context: Context) -> Iterator[Any]:
        logs = self.session.logs
        if logs is None:
            return

        async def subscribed() -> None:  # headers now tell the client no record is missed from here
            context.send_initial_metadata((("x-jumpstarter-logs", "subscribed"),))

        with contextlib.suppress(Cancelled):
            yield from self.bridge.iterate(logs.subscribe(subscribed), context)

    def Reset(self, request: Any, context: Context) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Reset is not implemented; end the session instead")

    def GetStatus(self, request: Any, context: Context) -> Any:
        s = self.session
        response = jumpstarter_pb2.GetStatusResponse(
            status=s.status, message=s.status_message, status_version=s.status_version
        )
        if s.previous_status is not None:
            response.previous_status = s.previous_status
        return response

    def EndSession(self, request: Any, context: Context) -> Any:
        callback = self.session.on_end_session
        if callback is None:
            return jumpstarter_pb2.EndSessionResponse(success=False, message="No active lease context")

        async def end() -> None:  # the callback belongs to the loop (exporterd's lease run)
            result = callback()
            if inspect.isawaitable(result):
                await result

        try:
            self.bridge.run(end(), context)
        except Cancelled:
            context.abort(grpc.StatusCode.CANCELLED, "call cancelled")
        return jumpstarter_pb2.EndSessionResponse(
            success=True, message="Session ending; afterLease hook runs now"
        )


class RouterServicer(_SlotServicer):
    """Session-level byte streams: driver streams and resources (PROTOCOL.md §5)."""

    def Stream(self, requests: Iterator[Any], context: Context) -> Iterator[Any]:
        try:
            request = self._request(context)
            session = self.session  # once: a lease swap in between must not mix two sessions
            driver = session.driver(str(request.get("uuid", "")))
            kind = request.get("kind")
            if kind == "driver":
                session.check_ready()
                exported, opener = driver.method(str(request.get("method", "connect")), BYTESTREAM)
                serve = self.bridge.stream_frames if exported.is_async else stream_blocking
                yield from serve(opener, ((OPEN_MARKER, "1"),), requests, context)
            elif kind == "resource":
                yield from self._resource(driver, request, requests, context)
            else:
                raise ValueError(f"unknown stream kind {kind!r} (driver or resource)")
        except Exception as exc:
            _abort(context, exc, "Stream")

    @staticmethod
    def _request(context: Context) -> dict[str, Any]:
        for key, value in context.invocation_metadata() or ():
            if key == "request":
                text = value.decode() if isinstance(value, bytes) else value
                try:
                    request = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"stream 'request' metadata is not JSON: {exc}") from exc
                if not isinstance(request, dict):
                    raise ValueError("stream 'request' metadata must be a JSON object")
                return request
        raise ValueError("stream needs a 'request' metadata entry (PROTOCOL.md §5)")

    def _resource(
        self, driver: Driver, request: dict[str, Any], requests: Iterator[Any], context: Context
    ) -> Iterator[Any]:
        from jumpstarter import compression  # bz2/lzma only when bulk data moves

        encoding = compression.check(request.get("x_jmp_content_encoding"))
        accepted = encoding if encoding in compression.supported() else None
        if encoding and not accepted:
            raise ValueError(f"this exporter cannot decompress {encoding}; send the data uncompressed")
        key = str(uuidlib.uuid4())
        handle = {"kind": "client_stream", "uuid": key, "x_jmp_content_encoding": encoding}

        @contextlib.asynccontextmanager
        async def opener() -> AsyncIterator[ByteStream]:  # the pipe's queues belong to the loop
            ours, theirs = memory_pipe(4)  # up to 4 chunks (<= 16 MiB) in flight per direction
            driver.resources[key] = theirs
            try:
                yield ours
            finally:
                driver.resources.pop(key, None)

        metadata = (("resource", json.dumps(handle)), ("x_jmp_accept_encoding", accepted or ""))
        yield from self.bridge.stream_frames(opener, metadata, requests, context)
