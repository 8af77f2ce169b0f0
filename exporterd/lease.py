"""One lease on the board: fresh drivers, the beforeLease/afterLease hooks, and the router tunnels.

A `LeaseRun` installs a fresh session (new driver instances) in the slot the board's
socket serves at its start and again at its end, runs the hooks, keeps the lease's
Listen stream, and splices each client's router stream with a connection to the board's
own socket. It gets everything from the `ControllerLink` that builds it: the controller
calls, the slot and a session factory, the socket path, the tunnel limits, and a callback
for a failed `onFailure: exit` afterLease hook. It knows nothing above it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import grpc
import structlog

from exporterd.controller_calls import BACKOFF_MAX, BACKOFF_START, ControllerCalls
from exporterd.hooks import run_hook
from exporterd.tunnels import NoClient, PendingTunnels, TunnelLimits
from jumpstarter import channels
from jumpstarter.backoff import Backoff
from jumpstarter.config.exporter import HookConfig
from jumpstarter.session.server import Session, SessionSlot
from jumpstarter.splice import splice
from jumpstarter.v1 import common_pb2, router_pb2_grpc

log = structlog.get_logger("exporterd.link")
S = common_pb2
RELEASE_GRACE = 1.0  # after EndSession: clients polling GetStatus see AVAILABLE before the session goes
HOOK_WARNING = "[HOOK_WARNING] "

SessionFactory = Callable[[int, str], Session]
"""Builds a session with fresh drivers: (status, name) -> Session, not yet started."""


class HookExit(Exception):
    """A hook with `onFailure: exit` failed: the exporter stops with exit code 1."""


class LeaseRun:
    """One lease: fresh drivers, hooks, and the router tunnels of its clients."""

    def __init__(
        self,
        name: str,
        client: str,
        *,
        controller: ControllerCalls,
        hooks: Mapping[str, HookConfig],
        slot: SessionSlot,
        new_session: SessionFactory,
        socket_path: str,
        limits: TunnelLimits,
        on_hook_exit: Callable[[], None],
    ) -> None:
        self.name = name
        self.client = client
        self.controller = controller
        self.hooks = hooks
        self.slot = slot
        self.new_session = new_session
        self.socket_path = socket_path
        self.on_hook_exit = on_hook_exit
        self.listener: asyncio.Task[None] | None = None
        self.tunnels: set[asyncio.Task[None]] = set()
        self.ending: asyncio.Task[None] | None = None
        self.routers: dict[str, grpc.aio.Channel] = {}
        self.finished = False
        self.pending = PendingTunnels(limits.wait, limits.max_pending)

    def _env(self) -> dict[str, str]:
        return {
            "JUMPSTARTER_HOST": self.socket_path,
            "LEASE_NAME": self.name,
            "CLIENT_NAME": self.client,
        }

    async def _fresh_session(self, status: int, name: str = "local") -> Session:
        await self.slot.current.stop()
        session = self.new_session(status, name)
        session.on_end_session = self.end_session
        self.slot.current = session
        await session.start()
        return session

    async def start(self) -> None:
        structlog.contextvars.bind_contextvars(lease=self.name, client=self.client)
        log.info("lease started")
        report = self.controller.report
        await self._fresh_session(
            S.EXPORTER_STATUS_BEFORE_LEASE_HOOK
            if "beforeLease" in self.hooks
            else S.EXPORTER_STATUS_AVAILABLE,
            self.name,
        )
        self.ensure_listening()
        if "beforeLease" not in self.hooks:
            await report(S.EXPORTER_STATUS_LEASE_READY, "Ready for commands")
            return
        hook = self.hooks["beforeLease"]
        await report(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK, "Running beforeLease hook")
        ok, outcome = await run_hook("beforeLease", hook, self._env())
        if ok:
            await report(S.EXPORTER_STATUS_LEASE_READY, "Ready for commands")
        elif hook.on_failure == "warn":
            await report(S.EXPORTER_STATUS_LEASE_READY, HOOK_WARNING + outcome)
        else:
            await report(S.EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED, outcome)
            self.finished = True  # afterLease is skipped after a failed beforeLease
            await asyncio.sleep(
                RELEASE_GRACE
            )  # clients polling GetStatus see the failure before the session goes
            await self.controller.release(self.name)
            if hook.on_failure == "exit":
                await report(S.EXPORTER_STATUS_OFFLINE, outcome)
                raise HookExit(outcome)

    def ensure_listening(self) -> None:
        if self.listener is None or self.listener.done():
            self.listener = asyncio.create_task(self._listen(), name=f"listen {self.name}")

    async def _listen(self) -> None:
        backoff = Backoff(start=BACKOFF_START, cap=BACKOFF_MAX)
        while not self.finished:
            try:
                async for response in self.controller.listen(self.name):
                    backoff.reset()
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
            await backoff.wait()

    async def _tunnel(self, endpoint: str, token: str) -> None:
        """Splice one router stream with one connection to our own session socket."""
        channel = self.routers.get(endpoint)
        if channel is None:  # one TLS channel per router for the whole lease
            channel = self.routers[endpoint] = channels.open_controller_aio(
                endpoint, self.controller.router_credentials(endpoint)
            )
        writer: asyncio.StreamWriter | None = None
        # Wait for the router: after an outage the channel may still be backing off while the
        # client already waits there; failing at once would leave it alone (`pending` bounds the wait).
        call = router_pb2_grpc.RouterServiceStub(channel).Stream(
            metadata=(("authorization", f"Bearer {token}"),), wait_for_ready=True
        )
        try:
            first = await self.pending.first_frame(call)
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
            await splice(reader, writer, call, first=first)
        except NoClient as exc:
            # wait_for_ready hides a failed TLS handshake: a router never reached may be the cause
            ready = channel.get_state() == grpc.ChannelConnectivity.READY
            if ready or not await self.controller.tls_failed(endpoint):
                log.info("tunnel given up", router=endpoint, reason=str(exc))
        except (grpc.RpcError, OSError) as exc:
            details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
                await self.controller.tls_failed(endpoint)
            log.debug("tunnel ended", router=endpoint, error=details)
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            if writer is not None:
                writer.close()

    async def end_session(self) -> None:
        """The client called EndSession: run afterLease now, then release the lease."""
        if self.ending is None:
            self.ending = asyncio.create_task(self._after(release=True))
            self.ending.add_done_callback(self._after_done)

    def _after_done(self, task: asyncio.Task[None]) -> None:
        """afterLease with `onFailure: exit` failed after EndSession (in its own task): tell the link."""
        if not task.cancelled() and isinstance(task.exception(), HookExit):
            self.on_hook_exit()

    async def _after(self, release: bool, run_hook_now: bool = True) -> None:
        report = self.controller.report
        if not self.finished and run_hook_now and "afterLease" in self.hooks:
            hook = self.hooks["afterLease"]
            await report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK, "Running afterLease hook")
            ok, outcome = await run_hook("afterLease", hook, self._env())
            if not ok and hook.on_failure == "exit":
                await report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED, outcome)
                raise HookExit(outcome)
            if not ok and hook.on_failure == "endLease":
                await report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED, outcome)
            elif not ok:
                await report(S.EXPORTER_STATUS_AVAILABLE, HOOK_WARNING + outcome)
        self.finished = True
        if release:
            # Upstream clients wait for AVAILABLE (or AFTER_LEASE_HOOK_FAILED) on this session after EndSession.
            if self.slot.current.status not in (
                S.EXPORTER_STATUS_AVAILABLE,
                S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED,
            ):
                await report(S.EXPORTER_STATUS_AVAILABLE, "Available for new lease")
            await asyncio.sleep(RELEASE_GRACE)
            await self.controller.release(self.name)

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
        await self.controller.report(S.EXPORTER_STATUS_AVAILABLE, "Available")
        log.info("lease ended")
        structlog.contextvars.unbind_contextvars("lease", "client")
