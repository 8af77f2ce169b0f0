"""The session server: one driver tree served as `ExporterService` + `RouterService`.

Used by exporterd (one per board, on its unix socket) and by the CLI's local
mode (`--config`, `--env`), so there is exactly one implementation of the
session side of the protocol. It runs on gRPC's synchronous thread-pool server
(session/servicers.py answers in its worker threads); the session's event loop,
the one that calls `build_server`, keeps everything async (session/bridge.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from concurrent import futures
from typing import Any

import grpc

from jumpstarter import frames
from jumpstarter.channels import server_options
from jumpstarter.session.bridge import LoopBridge
from jumpstarter.session.core import (
    CALLABLE_STATES,
    OPEN_MARKER,
    FreshIds,
    Session,
    SessionSlot,
    fresh_uuid,
)
from jumpstarter.session.servicers import ExporterServicer, RouterServicer
from jumpstarter.v1 import jumpstarter_pb2_grpc

__all__ = [
    "CALLABLE_STATES",
    "OPEN_MARKER",
    "FreshIds",
    "Session",
    "SessionServer",
    "SessionSlot",
    "build_server",
    "fresh_uuid",
    "serve_unix",
]

# Advertise 1 MiB HTTP/2 frames: a 64 KiB stream message arrives as one DATA frame.
SERVER_OPTIONS = server_options(("grpc.http2.max_frame_size", 1 << 20))
#: Worker threads: every open stream (byte stream, LogStream, streaming call) holds one, plus one reader
#: thread per byte stream; threads start only when calls need them.
MAX_WORKERS = 256


class SessionServer:
    """A started synchronous `grpc.Server`, stopped from the event loop without blocking it."""

    def __init__(self, server: grpc.Server, executor: futures.ThreadPoolExecutor) -> None:
        self.server = server
        self.executor = executor

    def add_insecure_port(self, address: str) -> int:
        return self.server.add_insecure_port(address)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self.server.add_secure_port(address, credentials)

    async def start(self) -> None:
        self.server.start()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, give running ones `grace` seconds (None: cancel them now), then end."""
        done = self.server.stop(grace)
        await asyncio.to_thread(done.wait)
        self.executor.shutdown(wait=False)


def build_server(session: Session | SessionSlot, interceptors: list[Any] | None = None) -> SessionServer:
    """The session's server; call it on the session's event loop (async driver methods run there)."""
    from jumpstarter.rpcinput import guarded

    slot = session if isinstance(session, SessionSlot) else SessionSlot(session)
    bridge = LoopBridge(asyncio.get_running_loop())
    executor = futures.ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="session")
    server = grpc.server(executor, options=SERVER_OPTIONS, interceptors=interceptors or None)
    registry = guarded(server)  # malformed requests: INVALID_ARGUMENT, no traceback in the log
    jumpstarter_pb2_grpc.add_ExporterServiceServicer_to_server(ExporterServicer(slot, bridge), registry)
    # RouterService.Stream with the fast frame codec (same bytes on the wire as router_pb2).
    stream = grpc.stream_stream_rpc_method_handler(
        RouterServicer(slot, bridge).Stream,
        request_deserializer=frames.decode,
        response_serializer=frames.encode,
    )
    registry.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("jumpstarter.v1.RouterService", {"Stream": stream}),)
    )
    return SessionServer(server, executor)


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
) -> AsyncIterator[SessionServer]:
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
