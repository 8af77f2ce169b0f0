"""The session server: one driver tree served as `ExporterService` + `RouterService`.

Used by exporterd (one per board, on its unix socket) and by the CLI's local
mode (`--config`, `--env`), so there is exactly one implementation of the
session side of the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import os
import stat
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
import structlog

from jumpstarter import frames, values
from jumpstarter.channels import server_options
from jumpstarter.driver.base import Driver
from jumpstarter.driver.decorators import BYTESTREAM, STREAMING, UNARY
from jumpstarter.errors import MethodNotFound, NotReady, status_for
from jumpstarter.session.logstream import LogBroadcaster
from jumpstarter.streams import ByteStream, memory_pipe
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc

log = structlog.get_logger("session")
Status: TypeAlias = common_pb2.ExporterStatus

# Advertise 1 MiB HTTP/2 frames: a 64 KiB stream message arrives as one DATA frame.
SERVER_OPTIONS = server_options(("grpc.http2.max_frame_size", 1 << 20))
CALLABLE_STATES = frozenset(
    {
        common_pb2.EXPORTER_STATUS_LEASE_READY,
        common_pb2.EXPORTER_STATUS_BEFORE_LEASE_HOOK,
        common_pb2.EXPORTER_STATUS_AFTER_LEASE_HOOK,
    }
)
#: Initial metadata of an opened driver stream is never empty, so a client can tell
#: success from a trailers-only error without racing the call's completion.
OPEN_MARKER = "x-jumpstarter-stream-open"


class FreshIds:
    """Fresh canonical UUIDs for response messages (PROTOCOL.md §4: "any fresh uuid").

    One random UUIDv4 per process whose last 48 bits count up: unique like uuid4() for this
    purpose, without a getrandom() call and a UUID object per response.
    """

    def __init__(self) -> None:
        seed = uuidlib.uuid4()
        self._prefix = str(seed)[:24]
        self._counter = itertools.count(seed.int & 0xFFFFFFFFFFFF)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


fresh_uuid = FreshIds()
Prepared: TypeAlias = tuple[Callable[..., Any], Any, bool]


class Session:
    """A driver tree plus its status; the state behind one session server."""

    def __init__(
        self,
        root: Driver,
        *,
        labels: dict[str, str] | None = None,
        motd: str = "",
        status: Status = common_pb2.EXPORTER_STATUS_LEASE_READY,
        name: str = "local",
    ) -> None:
        self.uuid = str(uuidlib.uuid4())
        self.name = name
        self.root = root
        self.labels = dict(labels or {})
        self.motd = motd
        self.drivers: dict[str, Driver] = {}
        for driver, _, _ in root.enumerate():
            self.drivers.setdefault(driver.uuid, driver)
        self.status = status
        self.status_message = "Ready for commands" if status in CALLABLE_STATES else ""
        self.status_version = 1
        self.previous_status: Status | None = None
        self.on_end_session: Callable[[], Any] | None = None
        self.logs: LogBroadcaster | None = None
        self._report: jumpstarter_pb2.GetReportResponse | None = None
        #: (driver uuid, method, kind) -> bound method, binder, is_async; only names that exist get in.
        self._methods: dict[tuple[str, str, str], Prepared] = {}

    def set_status(self, status: Status, message: str = "") -> None:
        if status == self.status and message == self.status_message:
            return
        self.previous_status = self.status
        self.status = status
        self.status_message = message
        self.status_version += 1

    def report(self) -> jumpstarter_pb2.GetReportResponse:
        if self._report is None:
            response = jumpstarter_pb2.GetReportResponse(uuid=self.uuid, labels=self.labels, motd=self.motd)
            for driver, parent, name in self.root.enumerate():
                entry = response.reports.add(uuid=driver.uuid, labels=driver.report_labels(name))
                if parent is not None:
                    entry.parent_uuid = parent.uuid
                if driver.description:
                    entry.description = driver.description
                methods = dict(driver.methods_description)
                for method_name, exported in driver.exported_methods().items():
                    if exported.doc and method_name not in methods:
                        methods[method_name] = exported.doc.splitlines()[0]
                entry.methods_description.update(methods)
            self._report = response
        return self._report

    def driver(self, uuid: str) -> Driver:
        driver = self.drivers.get(uuid)
        if driver is None:
            raise MethodNotFound(f"no driver with uuid {uuid!r} in this session (call GetReport again)")
        return driver

    def method(self, uuid: str, name: str, kind: str) -> Prepared:
        """The bound method `name` of driver `uuid`, its argument binder and whether it is async."""
        key = (uuid, name, kind)
        prepared = self._methods.get(key)
        if prepared is None:
            driver = self.driver(uuid)
            exported, function = driver.method(name, kind)
            prepared = (function, exported.binder(type(driver)), exported.is_async)
            self._methods[key] = prepared
        return prepared

    def check_ready(self) -> None:
        if self.status not in CALLABLE_STATES:
            name = common_pb2.ExporterStatus.Name(self.status)
            raise NotReady(f"exporter not ready for driver calls (status: {name}: {self.status_message})")

    async def start(self) -> None:
        """Reset the drivers (children first) and start forwarding logs."""
        from jumpstarter.log import ensure_configured

        ensure_configured()
        loop = asyncio.get_running_loop()
        self.logs = LogBroadcaster(loop)
        logging.getLogger().addHandler(self.logs)
        for driver, _, _ in self.root.enumerate():
            driver.session_name = self.name
        await self.root.reset()

    async def stop(self) -> None:
        """Close every driver (once); never raises."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        if self.logs is not None:
            logging.getLogger().removeHandler(self.logs)
        with contextlib.suppress(Exception):
            await self.root.close()


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> None:
    code, message = status_for(exc)
    if code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        log.warning("driver call failed", call=what, code=code.name, error=message)
    await context.abort(code, message)


class SessionSlot:
    """The session a server serves now; exporterd swaps in a fresh one for every lease."""

    def __init__(self, session: Session) -> None:
        self.current = session


class ExporterServicer(jumpstarter_pb2_grpc.ExporterServiceServicer):
    def __init__(self, slot: SessionSlot) -> None:
        self.slot = slot

    @property
    def session(self) -> Session:
        return self.slot.current

    async def GetReport(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.session.report()

    def _prepare(self, request: Any, kind: str) -> tuple[Callable[..., Any], list[Any], bool]:
        session = self.session
        session.check_ready()
        function, binder, is_async = session.method(request.uuid, request.method, kind)
        wire = request.args
        args = binder.bind([values.decode(a) for a in wire] if wire else [])
        return function, args, is_async

    async def DriverCall(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            function, args, is_async = self._prepare(request, UNARY)
            if is_async:
                result = await function(*args)
            else:
                result = await asyncio.to_thread(function, *args)
            response = jumpstarter_pb2.DriverCallResponse(uuid=fresh_uuid())
            values.encode_into(response.result, result)
            return response
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc, request.method)

    async def StreamingDriverCall(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            function, args, is_async = self._prepare(request, STREAMING)
            if is_async:
                async for item in function(*args):
                    await context.write(self._item(item))
            else:
                iterator = iter(await asyncio.to_thread(function, *args))
                done = object()
                while (item := await asyncio.to_thread(next, iterator, done)) is not done:
                    await context.write(self._item(item))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc, request.method)

    @staticmethod
    def _item(item: Any) -> Any:
        response = jumpstarter_pb2.StreamingDriverCallResponse(uuid=fresh_uuid())
        values.encode_into(response.result, item)
        return response

    async def LogStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if self.session.logs is None:
            return

        async def subscribed() -> None:  # headers now tell the client no record is missed from here
            await context.send_initial_metadata((("x-jumpstarter-logs", "subscribed"),))

        async for message in self.session.logs.subscribe(subscribed):
            yield message

    async def Reset(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "Reset is not implemented; end the session instead"
        )

    async def GetStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        s = self.session
        response = jumpstarter_pb2.GetStatusResponse(
            status=s.status, message=s.status_message, status_version=s.status_version
        )
        if s.previous_status is not None:
            response.previous_status = s.previous_status
        return response

    async def EndSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        callback = self.session.on_end_session
        if callback is None:
            return jumpstarter_pb2.EndSessionResponse(success=False, message="No active lease context")
        result = callback()
        if inspect.isawaitable(result):
            await result
        return jumpstarter_pb2.EndSessionResponse(
            success=True, message="Session ending; afterLease hook runs now"
        )


class RouterServicer:
    """Session-level byte streams: driver streams and resources (PROTOCOL.md §5)."""

    def __init__(self, slot: SessionSlot) -> None:
        self.slot = slot

    @property
    def session(self) -> Session:
        return self.slot.current

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            request = self._request(context)
            driver = self.session.driver(str(request.get("uuid", "")))
            kind = request.get("kind")
            if kind == "driver":
                self.session.check_ready()
                _, opener = driver.method(str(request.get("method", "connect")), BYTESTREAM)
                async with opener() as stream:
                    await context.send_initial_metadata(((OPEN_MARKER, "1"),))  # see OPEN_MARKER
                    await pump(context, stream)
            elif kind == "resource":
                await self._resource(driver, request, context)
            else:
                raise ValueError(f"unknown stream kind {kind!r} (driver or resource)")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort(context, exc, "Stream")

    @staticmethod
    def _request(context: grpc.aio.ServicerContext) -> dict[str, Any]:
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

    async def _resource(
        self, driver: Driver, request: dict[str, Any], context: grpc.aio.ServicerContext
    ) -> None:
        from jumpstarter import compression  # bz2/lzma only when bulk data moves

        encoding = compression.check(request.get("x_jmp_content_encoding"))
        accepted = encoding if encoding in compression.supported() else None
        if encoding and not accepted:
            raise ValueError(f"this exporter cannot decompress {encoding}; send the data uncompressed")
        key = str(uuidlib.uuid4())
        ours, theirs = memory_pipe(4)  # up to 4 chunks (<= 16 MiB) in flight per direction
        driver.resources[key] = theirs
        handle = {"kind": "client_stream", "uuid": key, "x_jmp_content_encoding": encoding}
        try:
            await context.send_initial_metadata(
                (("resource", json.dumps(handle)), ("x_jmp_accept_encoding", accepted or ""))
            )
            await pump(context, ours)
        finally:
            driver.resources.pop(key, None)


async def pump(context: grpc.aio.ServicerContext, stream: ByteStream) -> None:
    """Move frames between a server-side `RouterService.Stream` call and a byte stream."""

    async def inbound() -> None:  # GOAWAY or the end of the call = EOF; RST_STREAM raises StreamReset
        while (frame := await context.read()) is not grpc.aio.EOF:
            if (data := frames.content(frame, "client")) is None:
                break
            if data:
                await stream.send(data)
        await stream.send_eof()

    async def outbound() -> None:
        while data := await stream.receive():
            await context.write(frames.Frame(data))
        await context.write(frames.Frame(b"", frames.GOAWAY))

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await stream.aclose()


def build_server(session: Session | SessionSlot, interceptors: list[Any] | None = None) -> grpc.aio.Server:
    slot = session if isinstance(session, SessionSlot) else SessionSlot(session)
    from jumpstarter.rpcinput import guarded

    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors or None)
    registry = guarded(server)  # malformed requests: INVALID_ARGUMENT, no traceback in the log
    jumpstarter_pb2_grpc.add_ExporterServiceServicer_to_server(ExporterServicer(slot), registry)
    # RouterService.Stream with the fast frame codec (same bytes on the wire as router_pb2).
    stream = grpc.stream_stream_rpc_method_handler(
        RouterServicer(slot).Stream, request_deserializer=frames.decode, response_serializer=frames.encode
    )
    registry.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("jumpstarter.v1.RouterService", {"Stream": stream}),)
    )
    return server


def _claim_socket_path(path: str) -> None:
    """Remove a stale socket left by a crashed run, but never take over a live one."""
    import errno
    import socket

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another exporter is serving on {path}")


@contextlib.asynccontextmanager
async def serve_unix(
    session: Session | SessionSlot, path: str, mode: int = 0o660
) -> AsyncIterator[grpc.aio.Server]:
    """Serve `session` on a unix socket (created with `mode`), removed again on exit."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    _claim_socket_path(path)
    server = build_server(session)
    old_umask = os.umask(0o777 & ~mode)  # the socket is born with the right mode: no window
    try:
        try:
            server.add_insecure_port(f"unix:{path}")
        except RuntimeError as exc:
            raise OSError(f"{path}: cannot listen ({exc})") from None
        await server.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    try:
        yield server
    finally:
        await server.stop(grace=1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
