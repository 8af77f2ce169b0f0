"""The calls exporterd makes to controllerd (PROTOCOL.md §6) on the link's current channel.

Owns the controller channel and its credentials, the exporter's call metadata (its
token), status reports (the local session and the controller see them in one order),
the heartbeat that repeats the last one, ReleaseLease, the goodbye on shutdown, and
the one-line report of a failed TLS handshake. It knows nothing of leases or of the
daemon: `ControllerLink` opens and closes the channel, a `LeaseRun` calls through it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import structlog

from jumpstarter import channels
from jumpstarter.config.exporter import BoardConfig
from jumpstarter.session.server import SessionSlot
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc

log = structlog.get_logger("exporterd.link")
S = common_pb2
HEARTBEAT = 10.0  # seconds between repeated status reports; controllerd's default offline_after is 30 s
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0  # pauses between reconnects to the controller (and its Listen)


class ControllerCalls:
    """The exporter's side of controllerd's ControllerService, for one board."""

    def __init__(self, config: BoardConfig, slot: SessionSlot) -> None:
        self.endpoint = config.endpoint or ""
        self.tls_ca = config.tls_ca
        self.tls_insecure = config.tls_insecure
        self.slot = slot  # reports set the status of the session served now, too
        self.credentials = channels.controller_credentials(self.endpoint, self.tls_ca, self.tls_insecure)
        self.metadata = (
            ("authorization", f"Bearer {config.token}"),
            ("jumpstarter-kind", "Exporter"),
            ("jumpstarter-namespace", config.namespace),
            ("jumpstarter-name", config.name),
        )
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None
        self.reporting = asyncio.Lock()  # one report at a time: the controller sees them in order
        self.reported: tuple[int, str] | None = None  # what the heartbeat repeats
        self.tls_problems: set[str] = set()  # logged once each as an error; repeats only at debug level

    def connect(self) -> None:
        """A new channel to the controller; calls made from now on use it."""
        self.channel = channels.open_controller_aio(self.endpoint, self.credentials)
        self.stub = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def register(self, name: str) -> None:
        reports = list(self.slot.current.report().reports)
        await self.stub.Register(
            jumpstarter_pb2.RegisterRequest(labels={"jumpstarter.dev/name": name}, reports=reports),
            metadata=self.metadata,
            timeout=30,
        )

    def status_stream(self) -> Any:
        """The controller's Status stream: whether, and by whom, the board is leased."""
        return self.stub.Status(jumpstarter_pb2.StatusRequest(), metadata=self.metadata)

    def listen(self, lease_name: str) -> Any:
        """The controller's Listen stream of one lease: a router endpoint and token per client dial."""
        request = jumpstarter_pb2.ListenRequest(lease_name=lease_name)
        return self.stub.Listen(request, metadata=self.metadata)

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

    async def heartbeat(self) -> None:
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

    async def goodbye(self) -> None:
        """OFFLINE, then Unregister, on a channel of its own (the link's may be cancelled mid-call)."""
        channel = channels.open_controller_aio(self.endpoint, self.credentials)
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

    def router_credentials(self, endpoint: str) -> grpc.ChannelCredentials:
        """Credentials for a router: the controller's own when it is the same endpoint."""
        if endpoint == self.endpoint:
            return self.credentials
        return channels.controller_credentials(endpoint, self.tls_ca, self.tls_insecure)

    async def tls_failed(self, endpoint: str, **context: Any) -> bool:
        """Whether TLS to this controller or router fails; the first time for a cause, one error line."""
        loop = asyncio.get_running_loop()
        problem = await loop.run_in_executor(
            None, channels.tls_failure, endpoint, self.tls_ca, self.tls_insecure, "exporter"
        )
        if problem is None:
            return False
        if problem in self.tls_problems:
            log.debug(problem, **context)
        else:
            self.tls_problems.add(problem)
            log.error(problem, **context)
        return True
