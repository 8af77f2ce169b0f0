"""exporterd's link to controllerd (PROTOCOL.md §6): register, keep the status stream, run leases.

`ControllerLink.run()` registers, follows the controller's Status stream and starts
and finishes a `LeaseRun` as the controller leases the board; lost connections to the
controller are retried with `Backoff`, and a lease survives them. The controller counts
the exporter online only while it hears from it: `ControllerCalls` repeats the status
every HEARTBEAT seconds, and the channel answers keepalive. The Daemon builds the link
with what it needs (config, the session slot and a session factory, the socket path,
tunnel limits, a stop callback); `run()` returns the exporter's exit code: nothing here
reaches back up into the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from exporterd.controller_calls import BACKOFF_MAX, BACKOFF_START, ControllerCalls
from exporterd.lease import HookExit, LeaseRun, SessionFactory
from exporterd.tunnels import TunnelLimits
from jumpstarter.backoff import Backoff
from jumpstarter.config.exporter import BoardConfig
from jumpstarter.session.server import SessionSlot
from jumpstarter.v1 import common_pb2

log = structlog.get_logger("exporterd.link")
S = common_pb2
JITTER = 0.2  # reconnects of many exporters after a controller restart spread ±20 %


class ControllerLink:
    def __init__(
        self,
        config: BoardConfig,
        slot: SessionSlot,
        new_session: SessionFactory,
        socket_path: str,
        limits: TunnelLimits,
        stop: Callable[[], None],
    ) -> None:
        """`stop` asks the daemon to stop (it then cancels `run()`)."""
        self.config = config
        self.slot = slot
        self.new_session = new_session
        self.socket_path = socket_path
        self.limits = limits
        self._stop = stop
        self.controller = ControllerCalls(config, slot)
        self.lease: LeaseRun | None = None
        self._exit_code = 0  # what run() returns once the daemon cancels it

    async def run(self) -> int:
        """Serve the controller until cancelled (then sign off); the exporter's exit code.

        1 when a hook with `onFailure: exit` failed: a beforeLease hook ends the link at once;
        an afterLease hook (in its own task) calls `stop`, and the cancellation that follows
        returns 1 here after signing off.
        """
        try:
            return await self._serve()
        except asyncio.CancelledError:
            if self._exit_code:
                return self._exit_code  # we asked to be stopped: the daemon awaits this code
            raise

    async def _serve(self) -> int:
        backoff = Backoff(start=BACKOFF_START, cap=BACKOFF_MAX, jitter=JITTER)
        controller = self.controller
        try:
            while True:
                controller.connect()
                heartbeat: asyncio.Task[None] | None = None
                try:
                    await self._register()
                    controller.tls_problems.clear()
                    backoff.reset()
                    heartbeat = asyncio.create_task(controller.heartbeat(), name="heartbeat")
                    async for status in controller.status_stream():
                        await self._on_status(status)
                    log.warning("controller closed the status stream; reconnecting")
                except grpc.RpcError as exc:
                    retry_in = round(backoff.current, 1)
                    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        log.error("the controller refuses this exporter's token", error=exc.details())
                    elif exc.code() == grpc.StatusCode.UNAVAILABLE and await controller.tls_failed(
                        controller.endpoint, retry_in=retry_in
                    ):
                        pass
                    else:
                        log.warning(
                            "controller connection lost; retrying", error=exc.details(), retry_in=retry_in
                        )
                except HookExit:
                    return 1
                finally:
                    if heartbeat is not None:
                        heartbeat.cancel()
                    await controller.close()
                await backoff.wait()
        except asyncio.CancelledError:
            await self._shutdown()
            raise

    def _hook_exit(self) -> None:
        """afterLease with `onFailure: exit` failed after EndSession: stop the exporter with code 1."""
        self._exit_code = 1
        self._stop()

    async def _register(self) -> None:
        await self.controller.register(self.config.name)
        if self.lease is None:
            await self.controller.report(S.EXPORTER_STATUS_AVAILABLE, "Exporter registered and available")
        log.info("registered with the controller", endpoint=self.config.endpoint)

    async def _on_status(self, status: Any) -> None:
        lease_name = status.lease_name if status.leased and status.HasField("lease_name") else None
        if self.lease is not None and self.lease.name != lease_name:
            await self.lease.finish(reason="the controller ended the lease")
            self.lease = None
        if lease_name and self.lease is None:
            self.lease = LeaseRun(
                lease_name,
                status.client_name,
                controller=self.controller,
                hooks=self.config.hooks,
                slot=self.slot,
                new_session=self.new_session,
                socket_path=self.socket_path,
                limits=self.limits,
                on_hook_exit=self._hook_exit,
            )
            await self.lease.start()
        elif lease_name and self.lease is not None:
            self.lease.client = status.client_name
            self.lease.ensure_listening()

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            if self.lease is not None:
                await self.lease.finish(reason="exporter shutting down", run_hook=False)
            await self.controller.goodbye()
