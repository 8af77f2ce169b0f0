"""exporterd's link to controllerd (PROTOCOL.md §6): register, keep the status stream, serve leases.

For every lease the board gets fresh driver instances (reset at the start,
closed at the end), the beforeLease hook runs, and each `ListenResponse` is
tunnelled through the router to the board's own socket: the router carries a
whole gRPC connection from the client to our session server. After the lease
(client `EndSession` or the controller saying `leased=false`) the afterLease
hook runs and the exporter releases the lease. Lost connections to the
controller or a router are retried with backoff; a lease survives them.
The controller counts the exporter online only while it hears from it: the
status is repeated every HEARTBEAT seconds, and the channel answers keepalive.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from exporterd.hooks import run_hook
from exporterd.tunnels import DEFAULT_MAX_PENDING, DEFAULT_TUNNEL_WAIT, NoClient, PendingTunnels
from jumpstarter import channels
from jumpstarter.session.server import Session, SessionSlot
from jumpstarter.splice import splice
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc, router_pb2_grpc

if TYPE_CHECKING:
    from exporterd.daemon import Daemon

log = structlog.get_logger("exporterd.link")
S = common_pb2
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
HEARTBEAT = 10.0  # seconds between repeated status reports; controllerd's default offline_after is 30 s
RELEASE_GRACE = 1.0  # after EndSession: clients polling GetStatus see AVAILABLE before the session goes
HOOK_WARNING = "[HOOK_WARNING] "


class HookExit(Exception):
    """A hook with `onFailure: exit` failed: the exporter stops with exit code 1."""


class ControllerLink:
    def __init__(self, daemon: Daemon, slot: SessionSlot) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.slot = slot
        self.credentials = channels.controller_credentials(
            self.config.endpoint or "", self.config.tls_ca, self.config.tls_insecure
        )
        self.metadata = (
            ("authorization", f"Bearer {self.config.token}"),
            ("jumpstarter-kind", "Exporter"),
            ("jumpstarter-namespace", self.config.namespace),
            ("jumpstarter-name", self.config.name),
        )
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None
        self.lease: LeaseRun | None = None
        self.exit_code = 0
        self.reporting = asyncio.Lock()  # one report at a time: the controller sees them in order
        self.reported: tuple[int, str] | None = None  # what the heartbeat repeats
        self.tls_problems: set[str] = set()  # logged once each as an error; repeats only at debug level

    # -- controller RPCs -------------------------------------------------------------

    async def report(self, status: int, message: str = "", release: bool = False) -> None:
        self.slot.current.set_status(status, message)  # type: ignore[arg-type]
        request = jumpstarter_pb2.ReportStatusRequest(status=status, message=message)  # type: ignore[arg-type]
        if release:
            request.release_lease = True
        try:
            async with self.reporting:
                self.reported = (status, message)
                await self.stub.ReportStatus(request, metadata=self.metadata, timeout=30)
        except grpc.RpcError as exc:
            log.warning("ReportStatus failed", error=exc.details())

    async def _heartbeat(self) -> None:
        """Repeat the current status: the controller counts only what the exporter sends as alive."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            async with self.reporting:  # read inside the lock: never resend a status a report replaced
                if self.reported is None:
                    continue
                status, message = self.reported
                request = jumpstarter_pb2.ReportStatusRequest(status=status, message=message)  # type: ignore[arg-type]
                try:
                    await self.stub.ReportStatus(request, metadata=self.metadata, timeout=HEARTBEAT)
                except grpc.RpcError as exc:
                    log.debug("heartbeat failed", error=exc.details())

    async def release(self, lease_name: str) -> None:
        try:
            await self.stub.ReleaseLease(
                jumpstarter_pb2.ReleaseLeaseRequest(name=lease_name), metadata=self.metadata, timeout=30
            )
        except grpc.RpcError as exc:
            if exc.code() in (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                await self.report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK, "releasing", release=True)
            else:
                log.warning("ReleaseLease failed", lease=lease_name, error=exc.details())

    async def tls_failed(self, endpoint: str, **context: Any) -> bool:
        """Whether TLS to this controller or router fails; the first time for a cause, one error line."""
        loop = asyncio.get_running_loop()
        problem = await loop.run_in_executor(
            None, channels.tls_failure, endpoint, self.config.tls_ca, self.config.tls_insecure, "exporter"
        )
        if problem is None:
            return False
        if problem in self.tls_problems:
            log.debug(problem, **context)
        else:
            self.tls_problems.add(problem)
            log.error(problem, **context)
        return True

    async def _register(self) -> None:
        session = self.slot.current
        await self.stub.Register(
            jumpstarter_pb2.RegisterRequest(
                labels={"jumpstarter.dev/name": self.config.name}, reports=list(session.report().reports)
            ),
            metadata=self.metadata,
            timeout=30,
        )
        if self.lease is None:
            await self.report(S.EXPORTER_STATUS_AVAILABLE, "Exporter registered and available")
        log.info("registered with the controller", endpoint=self.config.endpoint)

    def after_lease_done(self, task: asyncio.Task[None]) -> None:
        """afterLease with `onFailure: exit` failed after EndSession (in its own task): stop with code 1."""
        if not task.cancelled() and isinstance(task.exception(), HookExit):
            self.exit_code = 1
            self.daemon.stop.set()

    # -- main loop -----------------------------------------------------------------------

    async def run(self) -> int:
        delay = BACKOFF_START
        try:
            while True:
                self.channel = channels.open_controller_aio(self.config.endpoint or "", self.credentials)
                self.stub = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel)
                heartbeat: asyncio.Task[None] | None = None
                try:
                    await self._register()
                    self.tls_problems.clear()
                    delay = BACKOFF_START
                    heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
                    async for status in self.stub.Status(
                        jumpstarter_pb2.StatusRequest(), metadata=self.metadata
                    ):
                        await self._on_status(status)
                    log.warning("controller closed the status stream; reconnecting")
                except grpc.RpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        log.error("the controller refuses this exporter's token", error=exc.details())
                    elif exc.code() == grpc.StatusCode.UNAVAILABLE and await self.tls_failed(
                        self.config.endpoint or "", retry_in=round(delay, 1)
                    ):
                        pass
                    else:
                        log.warning(
                            "controller connection lost; retrying",
                            error=exc.details(),
                            retry_in=round(delay, 1),
                        )
                except HookExit:
                    return 1
                finally:
                    if heartbeat is not None:
                        heartbeat.cancel()
                    await self.channel.close()
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, BACKOFF_MAX)
        except asyncio.CancelledError:
            await self._shutdown()
            raise

    async def _on_status(self, status: Any) -> None:
        lease_name = status.lease_name if status.leased and status.HasField("lease_name") else None
        if self.lease is not None and self.lease.name != lease_name:
            await self.lease.finish(reason="the controller ended the lease")
            self.lease = None
        if lease_name and self.lease is None:
            self.lease = LeaseRun(self, lease_name, status.client_name)
            await self.lease.start()
        elif lease_name and self.lease is not None:
            self.lease.client = status.client_name
            self.lease.ensure_listening()

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            if self.lease is not None:
                await self.lease.finish(reason="exporter shutting down", run_hook=False)
            channel = channels.open_controller_aio(self.config.endpoint or "", self.credentials)
            try:
                stub = jumpstarter_pb2_grpc.ControllerServiceStub(channel)
                await stub.ReportStatus(
                    jumpstarter_pb2.ReportStatusRequest(
                        status=S.EXPORTER_STATUS_OFFLINE, message="Exporter shutting down"
                    ),
                    metadata=self.metadata,
                    timeout=5,
                )
                await stub.Unregister(
                    jumpstarter_pb2.UnregisterRequest(reason="Exporter shutdown"),
                    metadata=self.metadata,
                    timeout=5,
                )
            finally:
                await channel.close()  # also when the controller is gone: never left to the GC


class LeaseRun:
    """One lease: fresh drivers, hooks, and the router tunnels of its clients."""

    def __init__(self, link: ControllerLink, name: str, client: str) -> None:
        self.link = link
        self.name = name
        self.client = client
        self.listener: asyncio.Task[None] | None = None
        self.tunnels: set[asyncio.Task[None]] = set()
        self.ending: asyncio.Task[None] | None = None
        self.routers: dict[str, grpc.aio.Channel] = {}
        self.finished = False
        args = link.daemon.args
        self.pending = PendingTunnels(
            getattr(args, "tunnel_wait", None) or DEFAULT_TUNNEL_WAIT,
            getattr(args, "max_pending_tunnels", None) or DEFAULT_MAX_PENDING,
        )

    def _env(self) -> dict[str, str]:
        return {
            "JUMPSTARTER_HOST": self.link.daemon.path,
            "LEASE_NAME": self.name,
            "CLIENT_NAME": self.client,
        }

    async def _fresh_session(self, status: int, name: str = "local") -> Session:
        old = self.link.slot.current
        await old.stop()
        session = self.link.daemon.new_session(status, name)
        session.on_end_session = self.end_session
        self.link.slot.current = session
        await session.start()
        return session

    async def start(self) -> None:
        structlog.contextvars.bind_contextvars(lease=self.name, client=self.client)
        log.info("lease started")
        hooks = self.link.config.hooks
        await self._fresh_session(
            S.EXPORTER_STATUS_BEFORE_LEASE_HOOK if "beforeLease" in hooks else S.EXPORTER_STATUS_AVAILABLE,
            self.name,
        )
        self.ensure_listening()
        if "beforeLease" not in hooks:
            await self.link.report(S.EXPORTER_STATUS_LEASE_READY, "Ready for commands")
            return
        hook = hooks["beforeLease"]
        await self.link.report(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK, "Running beforeLease hook")
        ok, outcome = await run_hook("beforeLease", hook, self._env())
        if ok:
            await self.link.report(S.EXPORTER_STATUS_LEASE_READY, "Ready for commands")
        elif hook.on_failure == "warn":
            await self.link.report(S.EXPORTER_STATUS_LEASE_READY, HOOK_WARNING + outcome)
        else:
            await self.link.report(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED, outcome)
            self.finished = True  # afterLease is skipped after a failed beforeLease
            await asyncio.sleep(
                RELEASE_GRACE
            )  # clients polling GetStatus see the failure before the session goes
            await self.link.release(self.name)
            if hook.on_failure == "exit":
                await self.link.report(S.EXPORTER_STATUS_OFFLINE, outcome)
                raise HookExit(outcome)

    def ensure_listening(self) -> None:
        if self.listener is None or self.listener.done():
            self.listener = asyncio.create_task(self._listen(), name=f"listen {self.name}")

    async def _listen(self) -> None:
        delay = BACKOFF_START
        while not self.finished:
            try:
                request = jumpstarter_pb2.ListenRequest(lease_name=self.name)
                async for response in self.link.stub.Listen(request, metadata=self.link.metadata):
                    delay = BACKOFF_START
                    task = asyncio.create_task(self._tunnel(response.router_endpoint, response.router_token))
                    self.tunnels.add(task)
                    task.add_done_callback(self.tunnels.discard)
                    if self.pending.admit(task) is not None:
                        log.info(
                            "tunnel dropped: too many waiting for their client",
                            limit=self.pending.max_pending,
                        )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    return
                log.warning("listen stream lost; retrying", error=exc.details())
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _tunnel(self, endpoint: str, token: str) -> None:
        """Splice one router stream with one connection to our own session socket."""
        channel = self.routers.get(endpoint)
        if channel is None:  # one TLS channel per router for the whole lease
            channel = self.routers[endpoint] = channels.open_controller_aio(
                endpoint, self._router_credentials(endpoint)
            )
        writer: asyncio.StreamWriter | None = None
        # Wait for the router: after an outage the channel may still be backing off while the
        # client already waits there; failing at once would leave it alone (`pending` bounds the wait).
        call = router_pb2_grpc.RouterServiceStub(channel).Stream(
            metadata=(("authorization", f"Bearer {token}"),), wait_for_ready=True
        )
        try:
            first = await self.pending.first_frame(call)
            reader, writer = await asyncio.open_unix_connection(self.link.daemon.path)
            await splice(reader, writer, call, first=first)
        except NoClient as exc:
            # wait_for_ready hides a failed TLS handshake: a router never reached may be the cause
            ready = channel.get_state() == grpc.ChannelConnectivity.READY
            if ready or not await self.link.tls_failed(endpoint):
                log.info("tunnel given up", router=endpoint, reason=str(exc))
        except (grpc.RpcError, OSError) as exc:
            details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
                await self.link.tls_failed(endpoint)
            log.debug("tunnel ended", router=endpoint, error=details)
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            if writer is not None:
                writer.close()

    def _router_credentials(self, endpoint: str) -> grpc.ChannelCredentials:
        if endpoint == self.link.config.endpoint:
            return self.link.credentials
        return channels.controller_credentials(
            endpoint, self.link.config.tls_ca, self.link.config.tls_insecure
        )

    async def end_session(self) -> None:
        """The client called EndSession: run afterLease now, then release the lease."""
        if self.ending is None:
            self.ending = asyncio.create_task(self._after(release=True))
            self.ending.add_done_callback(self.link.after_lease_done)

    async def _after(self, release: bool, run_hook_now: bool = True) -> None:
        hooks = self.link.config.hooks
        if not self.finished and run_hook_now and "afterLease" in hooks:
            hook = hooks["afterLease"]
            await self.link.report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK, "Running afterLease hook")
            ok, outcome = await run_hook("afterLease", hook, self._env())
            if not ok and hook.on_failure == "exit":
                await self.link.report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED, outcome)
                raise HookExit(outcome)
            if not ok and hook.on_failure == "endLease":
                await self.link.report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED, outcome)
            elif not ok:
                await self.link.report(S.EXPORTER_STATUS_AVAILABLE, HOOK_WARNING + outcome)
        self.finished = True
        if release:
            # Upstream clients wait for AVAILABLE (or AFTER_LEASE_HOOK_FAILED) on this session after EndSession.
            if self.link.slot.current.status not in (
                S.EXPORTER_STATUS_AVAILABLE,
                S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED,
            ):
                await self.link.report(S.EXPORTER_STATUS_AVAILABLE, "Available for new lease")
            await asyncio.sleep(RELEASE_GRACE)
            await self.link.release(self.name)

    async def finish(self, reason: str, run_hook: bool = True) -> None:
        """The lease is over: afterLease (once), stop tunnels, fresh drivers, AVAILABLE."""
        log.info("lease ending", reason=reason)
        if self.ending is not None:
            with contextlib.suppress(Exception):
                await self.ending
        else:
            await self._after(release=False, run_hook_now=run_hook)
        self.finished = True
        for task in [self.listener, *self.tunnels]:
            if task is not None:
                task.cancel()
        for channel in self.routers.values():
            await channel.close()
        self.routers.clear()
        await self._fresh_session(S.EXPORTER_STATUS_AVAILABLE)
        await self.link.report(S.EXPORTER_STATUS_AVAILABLE, "Available")
        log.info("lease ended")
        structlog.contextvars.unbind_contextvars("lease", "client")
