"""The router tunnel to a leased board, and the life of a held lease (PROTOCOL.md §5-6).

`Tunnel` is a private unix socket whose every connection is Dialed and spliced
through a router to the exporter's session; the socket is an ordinary
JUMPSTARTER_HOST for the CLI, pytest and `connect()`. `hold()` acquires a lease
(or reuses one), opens the tunnel, waits for the exporter, and on the way out
(Ctrl-C included) ends the session and releases the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from jumpstarter import channels
from jumpstarter.client.remote import (
    ACQUISITION_TIMEOUT,
    DEFAULT_DURATION,
    DIAL_TIMEOUT,
    READY_TIMEOUT,
    RETRYABLE,
    ControllerClient,
    LeaseError,
    RemoteError,
    TLSFailure,
    WaitCallback,
    dial_retryable,
    lease_state,
    rpc_error,
    short_name,
)
from jumpstarter.splice import splice
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc, router_pb2_grpc

ROUTER_CONNECT_WAIT = 10.0  # seconds for a new router channel to connect before its TLS is checked


class Tunnel:
    """A private unix socket; each connection to it is Dialed and spliced to the exporter via a router.

    Runs on its own asyncio loop thread so blocking code (and subprocesses given
    the path as JUMPSTARTER_HOST) can use it. Failures to Dial are kept in
    `last_error` and printed through `on_error`.
    """

    def __init__(
        self,
        client: ControllerClient,
        lease_name: str,
        dial_timeout: float = DIAL_TIMEOUT,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.lease_name = lease_name
        self.dial_timeout = dial_timeout
        self.on_error = on_error or (lambda text: print(f"jumpstarter: {text}", file=sys.stderr))
        base = tempfile.gettempdir()
        self.directory = tempfile.mkdtemp(prefix="jmp-", dir=base if len(base) < 60 else "/tmp")
        self.path = os.path.join(self.directory, "tunnel.sock")
        self.last_error: RemoteError | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="jmp-tunnel")
        self._server: asyncio.AbstractServer | None = None
        self._controller: grpc.aio.Channel | None = None
        self._routers: dict[str, grpc.aio.Channel] = {}
        self._tls_failed: dict[str, TLSFailure] = {}  # a router whose TLS fails is not tried again
        self.report_errors = True  # False while hold() waits for the exporter: it raises last_error itself
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> Tunnel:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        self._controller = channels.open_controller_aio(self.client.endpoint, self.client.credentials)
        self._server = await asyncio.start_unix_server(self._accept, path=self.path)
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._tasks:  # connections whose local side closed end OK at the router in a moment
            await asyncio.wait(set(self._tasks), timeout=1)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for channel in [self._controller, *self._routers.values()]:
            if channel is not None:
                await channel.close()
        # like asyncio.run(): let what is left (gRPC's own call tasks) finish before the loop stops
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            try:
                endpoint, token = await self._dial()
                channel = await self._router(endpoint)
            except RemoteError as exc:
                self.last_error = exc
                if self.report_errors:
                    self.on_error(str(exc))
                return
            call = router_pb2_grpc.RouterServiceStub(channel).Stream(
                metadata=(("authorization", f"Bearer {token}"),)
            )
            await splice(reader, writer, call)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # e.g. the router's certificate cannot be fetched (tls.insecure)
            self.on_error(f"lease {self.lease_name}: tunnel to the router failed: {exc}")
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _dial(self) -> tuple[str, str]:
        assert self._controller is not None
        stub = jumpstarter_pb2_grpc.ControllerServiceStub(self._controller)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.dial_timeout
        delay = 0.3
        while True:
            remaining = deadline - loop.time()
            try:
                response = await stub.Dial(
                    jumpstarter_pb2.DialRequest(lease_name=self.lease_name),
                    metadata=self.client.metadata,
                    timeout=max(1.0, min(remaining, 40.0)),
                )
                return response.router_endpoint, response.router_token
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await self._check_tls(self.client.endpoint)
                if not dial_retryable(exc) or loop.time() + delay > deadline:
                    raise rpc_error(exc, f"dial lease {self.lease_name}", self.client.endpoint) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _router(self, endpoint: str) -> grpc.aio.Channel:
        """One channel per router endpoint, trusted with the client config's CA (or pinned on first use)."""
        if endpoint in self._tls_failed:
            raise self._tls_failed[endpoint]
        channel = self._routers.get(endpoint)
        if channel is None:
            if endpoint == self.client.endpoint:
                credentials = self.client.credentials
            else:
                config = self.client.config
                credentials = await asyncio.get_running_loop().run_in_executor(
                    None, channels.controller_credentials, endpoint, config.ca, config.insecure
                )
            channel = self._routers[endpoint] = channels.open_controller_aio(endpoint, credentials)
            state = await channels.connect_state(channel, ROUTER_CONNECT_WAIT)
            if state != grpc.ChannelConnectivity.READY:
                await self._check_tls(endpoint)
        return channel

    async def _check_tls(self, endpoint: str) -> None:
        """Raise TLSFailure (once found, at once) when TLS to this endpoint fails with the config's CA."""
        failure = self._tls_failed.get(endpoint)
        if failure is None:
            loop = asyncio.get_running_loop()
            problem = await loop.run_in_executor(None, self.client.tls_failure, endpoint)
            if problem is None:
                return
            failure = self._tls_failed[endpoint] = TLSFailure(problem)
        raise failure


@dataclass
class Held:
    """An acquired lease with its tunnel: `path` is the JUMPSTARTER_HOST for it."""

    name: str
    exporter: str
    path: str
    created: bool
    labels: dict[str, str] = field(default_factory=dict)
    ended: threading.Event = field(default_factory=threading.Event)
    end_reason: str = ""


@contextlib.contextmanager
def hold(
    client: ControllerClient,
    *,
    selector: str = "",
    exporter_name: str | None = None,
    duration: float | None = DEFAULT_DURATION,
    lease_name: str | None = None,
    on_wait: WaitCallback | None = None,
    acquisition_timeout: float = ACQUISITION_TIMEOUT,
    dial_timeout: float = DIAL_TIMEOUT,
    ready_timeout: float = READY_TIMEOUT,
    show_hook_logs: bool = True,
    **options: Any,
) -> Iterator[Held]:
    """Acquire (or reuse `lease_name`), tunnel, wait for the exporter; on exit end the session and release.

    A reused lease is left as it is on exit; a lease created here is released.
    """
    created: str | None = None
    try:
        if lease_name:
            lease = client.get_lease(lease_name)
            if not client.owns(lease):
                raise LeaseError(f"lease {lease_name} belongs to {short_name(lease.client)}, not to you")
            lease = client.wait_ready(lease_name, on_wait, acquisition_timeout, first=lease)
        else:

            def remember(name: str) -> None:
                nonlocal created
                created = name

            lease = client.acquire(
                selector,
                exporter_name,
                duration,
                on_wait=on_wait,
                on_created=remember,
                timeout=acquisition_timeout,
                **options,
            )
        name = short_name(lease.name)
        held = Held(name, short_name(lease.exporter), "", created is not None)
        with contextlib.suppress(RemoteError):
            held.labels = dict(client.get_exporter(lease.exporter).labels) if lease.exporter else {}
        with Tunnel(client, name, dial_timeout) as tunnel:
            tunnel.report_errors = False  # until the exporter answers, a failure is raised, not printed
            held.path = tunnel.path
            control = grpc.insecure_channel(f"unix:{tunnel.path}", options=channels.CHANNEL_OPTIONS)
            session = jumpstarter_pb2_grpc.ExporterServiceStub(control)
            monitor = threading.Thread(target=_monitor, args=(client, held), daemon=True, name="jmp-lease")
            hook_logs: threading.Thread | None = None
            try:
                hook_logs = _follow_hook_logs(session) if show_hook_logs else None
                _wait_exporter_ready(session, tunnel, ready_timeout)
                tunnel.report_errors = True
                monitor.start()
                yield held
            finally:
                if created is not None:
                    _end_session(session)
                held.ended.set()  # stops the monitor
                if monitor.ident is not None:
                    monitor.join(timeout=5)  # it may be in a GetLease on the controller channel
                control.close()  # ends the hook log stream too
                if hook_logs is not None:  # no thread may touch gRPC while the interpreter shuts down
                    hook_logs.join(timeout=5)
    finally:
        if created is not None:
            client.release(created)


HOOK_SOURCES = {
    common_pb2.LOG_SOURCE_BEFORE_LEASE_HOOK: "beforeLease",
    common_pb2.LOG_SOURCE_AFTER_LEASE_HOOK: "afterLease",
}


def _follow_hook_logs(session: Any) -> threading.Thread:
    """Print the exporter's hook output on stderr while the lease is held (as upstream shells do)."""
    import sys

    from google.protobuf import empty_pb2

    call = session.LogStream(empty_pb2.Empty())

    def follow() -> None:
        try:
            for record in call:
                source = HOOK_SOURCES.get(record.source)
                if source is not None and record.message not in ("hook started", "hook finished"):
                    sys.stderr.write(f"[{source}] {record.message}\n")
                    sys.stderr.flush()
        except grpc.RpcError:
            pass  # cancelled at the end, or an exporter without LogStream

    thread = threading.Thread(target=follow, daemon=True, name="jmp-hook-logs")
    thread.start()
    return thread


def _wait_exporter_ready(session: Any, tunnel: Tunnel, timeout: float) -> None:
    """The exporter's session reports LEASE_READY (its beforeLease hook is done); old exporters: assume so."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = session.GetStatus(jumpstarter_pb2.GetStatusRequest(), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return
            if tunnel.last_error is not None:
                raise tunnel.last_error from None
            if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                raise RemoteError(
                    f"lease {tunnel.lease_name}: exporter unreachable: {exc.details()}", exc.code()
                ) from None
            time.sleep(0.3)
            continue
        if status.status == common_pb2.EXPORTER_STATUS_LEASE_READY:
            return
        if status.status == common_pb2.EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED:
            raise LeaseError(f"lease {tunnel.lease_name}: the beforeLease hook failed: {status.message}")
        if time.monotonic() > deadline:
            name = common_pb2.ExporterStatus.Name(status.status)
            raise LeaseError(f"lease {tunnel.lease_name}: exporter not ready after {timeout:g} s ({name})")
        time.sleep(0.1 if status.status == common_pb2.EXPORTER_STATUS_BEFORE_LEASE_HOOK else 0.3)


def _end_session(session: Any, hook_timeout: float = 120.0) -> None:
    """EndSession, then give a running afterLease hook time to finish; every failure is tolerated."""
    try:
        session.EndSession(jumpstarter_pb2.EndSessionRequest(), timeout=5)
        grace = time.monotonic() + 1.0
        deadline = time.monotonic() + hook_timeout
        while time.monotonic() < deadline:
            status = session.GetStatus(jumpstarter_pb2.GetStatusRequest(), timeout=5).status
            if status == common_pb2.EXPORTER_STATUS_AFTER_LEASE_HOOK:
                grace = deadline
            elif status != common_pb2.EXPORTER_STATUS_LEASE_READY or time.monotonic() > grace:
                return
            time.sleep(0.2)
    except grpc.RpcError:
        return  # UNIMPLEMENTED (an old exporter) or the session already went away


def _monitor(client: ControllerClient, held: Held, interval: float = 10.0) -> None:
    """Notice a lease that ends under us (expired, released by an admin) and set `held.ended`."""
    while not held.ended.wait(interval):
        try:
            state, reason, message = lease_state(client.get_lease(held.name))
        except RemoteError:
            continue
        if state == "ended":
            held.end_reason = f"{reason}: {message}" if message else reason
            held.ended.set()
