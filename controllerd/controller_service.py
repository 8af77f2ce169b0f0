"""`jumpstarter.v1.ControllerService`: exporters register and listen, clients dial (PROTOCOL.md §6)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from google.protobuf import empty_pb2

from controllerd import audit, validate
from controllerd.auth import Identity, TokenAuthority
from controllerd.convert import legacy_lease_message
from controllerd.dial_limits import DialLimits
from controllerd.errors import (
    ControllerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    status_of,
)
from controllerd.hub import Hub
from controllerd.liveness import silence_window
from controllerd.records import Exporter, ExporterStatus, Lease, now, uuid7
from controllerd.rpc import streaming, unary
from controllerd.scheduler import LeaseScheduler
from controllerd.store import Store
from jumpstarter import routertoken
from jumpstarter.backoff import Deadline
from jumpstarter.names import InvalidName
from jumpstarter.selector import from_labels
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc

log = structlog.get_logger("controllerd")

DIALABLE = frozenset(
    {
        ExporterStatus.UNSPECIFIED,
        ExporterStatus.LEASE_READY,
        ExporterStatus.BEFORE_LEASE_HOOK,
        ExporterStatus.AFTER_LEASE_HOOK,
    }
)
HOOK_FAILED = frozenset({ExporterStatus.BEFORE_LEASE_HOOK_FAILED, ExporterStatus.AFTER_LEASE_HOOK_FAILED})
DIAL_READY_WAIT = 30.0


class ControllerService(jumpstarter_pb2_grpc.ControllerServiceServicer):
    def __init__(
        self,
        store: Store,
        hub: Hub,
        scheduler: LeaseScheduler,
        auth: TokenAuthority,
        routers: list[str],
        router_key: bytes,
        dial_ready_wait: float = DIAL_READY_WAIT,
        *,
        max_lease_duration: float,
        dial_limits: DialLimits | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.scheduler = scheduler
        self.auth = auth
        self.routers = itertools.cycle(routers) if routers else None
        self.router_key = router_key
        self.dial_ready_wait = dial_ready_wait
        self.max_lease_duration = max_lease_duration
        self.dial_limits = dial_limits or DialLimits()

    async def _exporter(self, context: grpc.aio.ServicerContext) -> tuple[Identity, Exporter]:
        who = await self.auth.authenticate(context.invocation_metadata(), "Exporter")
        return who, await self.store.get_exporter(who.namespace, who.name)

    # -- exporter lifecycle ------------------------------------------------------

    @unary
    async def Register(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who, exporter = await self._exporter(context)
        old_labels = dict(exporter.labels)
        try:
            exporter.labels = validate.registered_labels(exporter.labels, dict(request.labels), who.name)
        except InvalidName:
            log.warning("register refused: reserved label", exporter=who.name, namespace=who.namespace)
            raise
        exporter.devices = [
            {
                "uuid": r.uuid,
                "parent_uuid": r.parent_uuid if r.HasField("parent_uuid") else None,
                "labels": dict(r.labels),
            }
            for r in request.reports[:10_000]
        ]
        exporter.registered = True
        exporter.last_seen = now()
        relabeled = (
            f"; labels {audit.labels_text(old_labels)} → {audit.labels_text(exporter.labels)}"
            if old_labels != exporter.labels
            else ""
        )
        registered = audit.event(
            who.namespace,
            "exporter",
            who.name,
            "registered",
            audit.exporter_actor(who.name),
            "Registered",
            f"{len(exporter.devices)} devices{relabeled}",
        )
        await self.store.save_exporter(exporter, [registered])
        log.info(
            "exporter registered", exporter=who.name, namespace=who.namespace, devices=len(exporter.devices)
        )
        self.hub.wake_scheduler()
        return jumpstarter_pb2.RegisterResponse(uuid=exporter.uid)

    @unary
    async def Unregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who, exporter = await self._exporter(context)
        exporter.registered = False
        exporter.devices = []
        exporter.status = ExporterStatus.OFFLINE
        exporter.status_message = request.reason or "Exporter unregistered"
        gone = audit.event(
            who.namespace,
            "exporter",
            who.name,
            "unregistered",
            audit.exporter_actor(who.name),
            "Unregistered",
            exporter.status_message,
        )
        await self.store.save_exporter(exporter, [gone])
        self.hub.exporter_changed(who.namespace, who.name)
        self.hub.wake_scheduler()
        log.info("exporter unregistered", exporter=who.name, reason=exporter.status_message)
        return jumpstarter_pb2.UnregisterResponse()

    @unary
    async def ReportStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who, exporter = await self._exporter(context)
        changed = exporter.status != request.status
        events = []
        if changed:
            events.append(
                audit.event(
                    who.namespace,
                    "exporter",
                    who.name,
                    "status",
                    audit.exporter_actor(who.name),
                    "HookFailed" if request.status in HOOK_FAILED else _status_name(request.status),
                    f"{_status_name(exporter.status)} → {_status_name(request.status)}"
                    + (f": {request.message}" if request.HasField("message") and request.message else ""),
                )
            )
        exporter.status = request.status
        exporter.status_message = request.message if request.HasField("message") else ""
        exporter.last_seen = now()
        await self.store.save_exporter(exporter, events)
        if changed:
            self.hub.exporter_changed(who.namespace, who.name)
            self.hub.wake_scheduler()
        if request.HasField("release_lease") and request.release_lease:
            lease = await self._held_lease(who)
            if lease is not None:
                await self.scheduler.release(
                    lease, "Released", "released by the exporter", actor=audit.exporter_actor(who.name)
                )
        return jumpstarter_pb2.ReportStatusResponse()

    async def _held_lease(self, who: Identity) -> Lease | None:
        for lease in await self.store.list_leases(who.namespace, only_active=True):
            if lease.exporter == who.name:
                return lease
        return None

    def _status_message(self, lease: Lease | None) -> Any:
        if lease is None:
            return jumpstarter_pb2.StatusResponse(leased=False)
        return jumpstarter_pb2.StatusResponse(
            leased=True, lease_name=lease.name, client_name=lease.client, context=lease.context
        )

    @streaming
    async def Status(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        who, exporter = await self._exporter(context)
        key = (who.namespace, who.name)
        self.hub.status_streams[key] += 1
        exporter.last_seen = now()
        if (
            exporter.status == ExporterStatus.OFFLINE
        ):  # it is back: a stale graceful-offline no longer applies
            exporter.status, exporter.status_message = ExporterStatus.UNSPECIFIED, ""
        await self.store.save_exporter(exporter)
        self.hub.wake_scheduler()
        log.info("exporter online", exporter=who.name)
        watch = self.hub.exporters[key]
        last: Any = None
        try:
            while True:
                if who.jti in self.auth.revoked:
                    raise Unauthenticated("token revoked")
                seen = watch.version
                lease = await self._held_lease(who)
                for message in self._transitions(key, lease, last):
                    # recorded before the yield: a stream closed while suspended there counts it told
                    self.hub.announced[key] = message.lease_name if message.leased else None
                    last = message
                    yield message
                await watch.wait_newer(seen)  # liveness is keepalive's job (controllerd/liveness.py)
        finally:
            self.hub.status_streams[key] -= 1
            try:
                exporter = await self.store.get_exporter(who.namespace, who.name)
                # keepalive drops a silent peer after at most this window: it was last heard no later
                heard = now() - silence_window(self.scheduler.offline_after)
                exporter.last_seen = max(exporter.last_seen or heard, heard)
                await self.store.save_exporter(exporter)
            except NotFound:
                pass
            self.hub.wake_scheduler()
            log.info("exporter status stream closed", exporter=who.name)

    def _transitions(self, key: tuple[str, str], lease: Lease | None, last: Any) -> list[Any]:
        """The messages that bring the exporter from what it was told to `lease`, in order.

        A lease that ends while the next one starts is two changes: `leased=false` first, since
        upstream exporters only take a new lease after it (PROTOCOL.md §6.2), on every stream.
        """
        current = self._status_message(lease)
        # what the exporter was last told: on this stream, or (a new stream) on an earlier one
        told = self.hub.announced.get(key) if last is None else (last.lease_name if last.leased else None)
        out = []
        if told is not None and told != (lease.name if lease is not None else None):
            out.append(self._status_message(None))
        if current != (out[-1] if out else last):
            out.append(current)
        return out

    @streaming
    async def Listen(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        who, _ = await self._exporter(context)
        if not request.lease_name:
            raise InvalidArgument("empty lease name")
        lease = await self.store.get_lease(who.namespace, request.lease_name)
        if lease.exporter != who.name or lease.ended:
            raise PermissionDenied(
                f"permission denied: lease {lease.name} is not held by {who.name}",
            )
        queue = self.hub.listen(who.namespace, lease.name)
        watch = self.hub.exporters[(who.namespace, who.name)]
        watch.bump()  # a Dial waiting for this exporter to listen goes on
        waits: set[asyncio.Future[Any]] = set()
        try:
            while True:
                if who.jti in self.auth.revoked:
                    raise Unauthenticated("token revoked")
                seen = watch.version
                getter = asyncio.ensure_future(queue.queue.get())
                stopper = asyncio.ensure_future(queue.superseded.wait())
                changed = asyncio.ensure_future(watch.wait_newer(seen))
                waits = {getter, stopper, changed}
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                changed.cancel()
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                if stopper not in done:
                    continue  # the exporter changed: re-check its token
                while not queue.queue.empty():  # superseded: deliver what was already promised
                    yield queue.queue.get_nowait()
                return
        finally:
            # A Listen ended by its exporter or by shutdown: its waits are ended, never left pending to the GC.
            for wait in waits:
                wait.cancel()
            if waits:
                await asyncio.wait(waits)
            self.hub.unlisten(who.namespace, lease.name, queue)

    # -- client side -----------------------------------------------------------------

    @unary
    async def Dial(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who = await self.auth.authenticate(context.invocation_metadata(), "Client")
        if not request.lease_name:
            raise InvalidArgument("empty lease name")
        self.dial_limits.charge(who.namespace, who.name)
        lease = await self.store.get_lease(who.namespace, request.lease_name)
        if lease.client != who.name:
            raise PermissionDenied(
                f"permission denied: lease {lease.name} belongs to another client",
            )
        if lease.ended or lease.exporter is None:
            raise FailedPrecondition(f"lease {lease.name} is not active")
        with self.dial_limits.dialing(who.namespace, lease.name):
            exporter = await self._wait_dialable(lease, who.name)
        if self.routers is None:
            raise Unavailable("no router configured on the controller")
        endpoint = next(self.routers)
        # One token per side, bound to this stream and lease: neither can be replayed (routerd).
        token, exporter_token = routertoken.mint_pair(self.router_key, f"{who.namespace}/{lease.name}")
        if not self.hub.push(
            who.namespace,
            lease.name,
            jumpstarter_pb2.ListenResponse(router_endpoint=endpoint, router_token=exporter_token),
        ):
            raise Unavailable(
                f"exporter {exporter.name} is not listening on lease {lease.name}",
            )
        log.info("dial", lease=lease.name, client=who.name, exporter=exporter.name, router=endpoint)
        return jumpstarter_pb2.DialResponse(router_endpoint=endpoint, router_token=token)

    async def _wait_dialable(self, lease: Lease, caller: str) -> Exporter:
        assert lease.exporter is not None
        key = (lease.namespace, lease.exporter)
        deadline = Deadline(self.dial_ready_wait)
        while True:
            seen = self.hub.exporters[key].version
            # the lease may be transferred or ended while we wait: every lease change bumps its exporter
            current = await self.store.get_lease(lease.namespace, lease.name)
            if current.client != caller:
                raise PermissionDenied(
                    f"permission denied: lease {lease.name} belongs to another client",
                )
            if current.ended or current.exporter != lease.exporter:
                raise FailedPrecondition(f"lease {lease.name} is not active")
            exporter = await self.store.get_exporter(*key)
            if not self.scheduler.online(exporter):
                raise FailedPrecondition(
                    f"exporter {exporter.name} is offline (the lease is paused; not ready until it returns)",
                )
            if exporter.status in HOOK_FAILED:
                said = exporter.status_message  # ours already says "beforeLease hook failed: ..."
                raise FailedPrecondition(
                    f"exporter {exporter.name}: "
                    + (said if "hook failed" in said else f"lease hook failed: {said}"),
                )
            listening = self.hub.listening(lease.namespace, lease.name)
            if exporter.status in DIALABLE and listening:
                return exporter
            remaining = deadline.remaining()
            if remaining <= 0 or not await self.hub.exporters[key].wait_newer(seen, remaining):
                if exporter.status in DIALABLE:  # ready, but its Listen stream is not back (yet)
                    raise Unavailable(
                        f"exporter {exporter.name} is not listening on lease {lease.name}",
                    )
                status = (
                    "Available" if exporter.status == ExporterStatus.AVAILABLE else str(int(exporter.status))
                )
                raise FailedPrecondition(f"exporter is not ready (status: {status})")

    # -- legacy lease RPCs ---------------------------------------------------------------

    @unary
    async def GetLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who = await self.auth.authenticate(context.invocation_metadata(), "Client")
        lease = await self.store.get_lease(who.namespace, request.name)
        if lease.client != who.name:
            raise PermissionDenied("GetLease permission denied")
        uid = (await self.store.get_exporter(lease.namespace, lease.exporter)).uid if lease.exporter else None
        return legacy_lease_message(lease, uid)

    @unary
    async def RequestLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who = await self.auth.authenticate(context.invocation_metadata(), "Client")
        labels = dict(request.selector.match_labels)
        validate.selector_labels(labels)
        lease = Lease(
            who.namespace,
            uuid7(),
            who.name,
            selector=str(from_labels(labels)),
            duration=request.duration.ToNanoseconds() / 1e9 if request.HasField("duration") else None,
        )
        validate.lease_request(lease, now(), self.max_lease_duration)
        lease = await self.scheduler.submit(lease)
        return jumpstarter_pb2.RequestLeaseResponse(name=lease.name)

    @unary
    async def ReleaseLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who = await self.auth.authenticate(context.invocation_metadata())
        lease = await self.store.get_lease(who.namespace, request.name)
        if who.kind == "Exporter":
            if lease.exporter != who.name:
                raise FailedPrecondition(
                    f"lease {lease.name} is not held by exporter {who.name}",
                )
        elif lease.client != who.name:
            raise PermissionDenied("ReleaseLease permission denied")
        if not lease.ended:
            actor = audit.exporter_actor(who.name) if who.kind == "Exporter" else audit.client_actor(who.name)
            await self.scheduler.release(
                lease, "Released", f"released by {who.kind.lower()} {who.name}", actor=actor
            )
        return jumpstarter_pb2.ReleaseLeaseResponse()

    @unary
    async def ListLeases(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who = await self.auth.authenticate(context.invocation_metadata(), "Client")
        leases = await self.store.list_leases(who.namespace, only_active=True)
        return jumpstarter_pb2.ListLeasesResponse(names=[le.name for le in leases if le.client == who.name])

    @unary
    async def GetServiceEndpoints(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._exporter(context)
        return jumpstarter_pb2.GetServiceEndpointsResponse()

    async def AuditStream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            who = await self.auth.authenticate(context.invocation_metadata(), "Exporter")
        except Exception as exc:  # whatever stopped the check, the caller is not let in
            told = status_of(exc) if isinstance(exc, ControllerError) else None
            await context.abort(*(told or (grpc.StatusCode.UNAUTHENTICATED, str(exc))))
        async for entry in request_iterator:
            log.info(
                "audit",
                exporter=who.name,
                driver=entry.driver_instance_uuid[:64],
                severity=entry.severity[:16],
                message=entry.message[:1024],
            )
        return empty_pb2.Empty()


def _status_name(status: int) -> str:
    """`LEASE_READY` for 4: the protocol's own names, in audit messages."""
    try:
        return str(common_pb2.ExporterStatus.Name(status)).removeprefix("EXPORTER_STATUS_")
    except ValueError:
        return str(status)
