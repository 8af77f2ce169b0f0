"""`jumpstarter.client.v1.ClientService`: exporters and leases for clients (PROTOCOL.md §7)."""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc
from google.protobuf import empty_pb2

from controllerd import validate
from controllerd.audit import client_actor
from controllerd.audit import event as audit_event
from controllerd.auth import Identity, TokenAuthority
from controllerd.convert import exporter_message, lease_message, split_name, split_parent, timestamp
from controllerd.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from controllerd.records import Lease, uuid7
from controllerd.rpc import unary
from controllerd.scheduler import LeaseScheduler
from controllerd.store import Store
from jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter.selector import Selector, parse

MAX_PAGE = 1000
DEFAULT_PAGE = 100


def _page(items: list[Any], size: int, token: str) -> tuple[list[Any], str]:
    """Opaque offset pagination; complete pages, `next_page_token` empty at the end."""
    size = DEFAULT_PAGE if size <= 0 else min(size, MAX_PAGE)
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode())
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("invalid page_token") from None
    chunk = items[start : start + size]
    end = start + len(chunk)
    return chunk, (base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else "")


def _selector(text: str, what: str) -> Selector:
    try:
        return parse(text)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


class ClientService(client_pb2_grpc.ClientServiceServicer):
    def __init__(
        self, store: Store, scheduler: LeaseScheduler, auth: TokenAuthority, *, max_lease_duration: float
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.auth = auth
        self.max_lease_duration = max_lease_duration

    async def _caller(
        self, context: grpc.aio.ServicerContext, resource: str, kind: str | None = None
    ) -> tuple[Identity, str, str]:
        """Authenticate first, then parse `namespaces/NS` (or `namespaces/NS/KIND/NAME`) in the caller's namespace."""
        who = await self.auth.authenticate(context.invocation_metadata(), "Client")
        if kind is None:
            namespace, name = split_parent(resource), ""
        else:
            namespace, _, name = split_name(resource, kind)
        if namespace != who.namespace:
            raise PermissionDenied("namespace mismatch")
        return who, namespace, name

    # -- exporters ------------------------------------------------------------------

    @unary
    async def GetExporter(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _, namespace, name = await self._caller(context, request.name, "exporters")
        exporter = await self.store.get_exporter(namespace, name)
        return exporter_message(exporter, self.scheduler.online(exporter))

    @unary
    async def ListExporters(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _, namespace, _ = await self._caller(context, request.parent)
        selector = _selector(request.filter, "filter")
        exporters = [e for e in await self.store.list_exporters(namespace) if selector.matches(e.labels)]
        chunk, token = _page(exporters, request.page_size, request.page_token)
        return client_pb2.ListExportersResponse(
            exporters=[exporter_message(e, self.scheduler.online(e)) for e in chunk], next_page_token=token
        )

    # -- leases ------------------------------------------------------------------------

    @unary
    async def GetLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _, namespace, name = await self._caller(context, request.name, "leases")
        return lease_message(await self.store.get_lease(namespace, name))

    @unary
    async def ListLeases(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _, namespace, _ = await self._caller(context, request.parent)
        only_active = request.only_active if request.HasField("only_active") else True
        selector = _selector(request.filter, "filter")
        tags = _selector(request.tag_filter, "tag_filter")
        leases = [
            le
            for le in await self.store.list_leases(namespace, only_active=only_active)
            if selector.matches(parse(le.selector).match_labels()) and tags.matches(le.tags)
        ]
        chunk, token = _page(leases, request.page_size, request.page_token)
        return client_pb2.ListLeasesResponse(
            leases=[lease_message(le) for le in chunk], next_page_token=token
        )

    @unary
    async def CreateLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who, namespace, _ = await self._caller(context, request.parent)
        spec = request.lease
        name = request.lease_id or uuid7()
        lease = Lease(
            namespace,
            name,
            who.name,
            selector=spec.selector,
            exporter_name=spec.exporter_name or None,
            duration=spec.duration.ToNanoseconds() / 1e9 if spec.HasField("duration") else None,
            begin_time=spec.begin_time.ToNanoseconds() / 1e9 if spec.HasField("begin_time") else None,
            end_time=spec.end_time.ToNanoseconds() / 1e9 if spec.HasField("end_time") else None,
            tags=dict(spec.tags),
            context=dict(spec.context),
            allow_disabled=spec.allow_disabled,
        )
        validate.lease_request(lease, time.time(), self.max_lease_duration)
        try:
            return lease_message(await self.scheduler.submit(lease))
        except Conflict:  # the store's message names the namespace; upstream's does not
            raise Conflict(f"lease {name} already exists") from None

    @unary
    async def UpdateLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who, namespace, name = await self._caller(context, request.lease.name, "leases")
        spec = request.lease
        paths = (
            set(request.update_mask.paths)
            if request.HasField("update_mask") and request.update_mask.paths
            else None
        )

        def wanted(field: str, present: bool) -> bool:
            return field in paths if paths is not None else present

        target: str | None = None
        if wanted("client", spec.HasField("client") and bool(spec.client)):
            target_ns, _, target = split_name(spec.client, "clients")
            if target_ns != namespace:
                raise InvalidArgument(
                    "a lease can only move to a client of the same namespace",
                )
            try:
                await self.store.get_client(namespace, target)
            except NotFound:
                raise NotFound(f"client {target} not found") from None

        def change(lease: Lease) -> None:  # runs on the current record, under the scheduler's lock
            if lease.client != who.name:
                raise PermissionDenied("permission denied: not your lease")
            if lease.ended:
                raise FailedPrecondition(f"lease {name} has ended")
            if wanted("begin_time", spec.HasField("begin_time")):
                new_begin = spec.begin_time.ToNanoseconds() / 1e9 if spec.HasField("begin_time") else None
                if lease.exporter is not None and new_begin != lease.begin_time:
                    raise FailedPrecondition(
                        "begin_time can only change before the lease starts",
                    )
                lease.begin_time = new_begin
            if wanted("duration", spec.HasField("duration")):
                lease.duration = spec.duration.ToNanoseconds() / 1e9 if spec.HasField("duration") else None
                if not wanted("end_time", spec.HasField("end_time")):
                    lease.end_time = None
            if wanted("end_time", spec.HasField("end_time")):
                lease.end_time = spec.end_time.ToNanoseconds() / 1e9 if spec.HasField("end_time") else None
            if target is not None:
                lease.client = target
            validate.lease_times(lease, time.time(), self.max_lease_duration)

        return lease_message(await self.scheduler.update(namespace, name, change, client_actor(who.name)))

    @unary
    async def DeleteLease(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        who, namespace, name = await self._caller(context, request.name, "leases")
        lease = await self.store.get_lease(namespace, name)
        if lease.client != who.name:
            raise PermissionDenied("permission denied: not your lease")
        if lease.ended:
            raise FailedPrecondition(f"lease {name} is already released")
        await self.scheduler.release(
            lease, "Released", f"released by client {who.name}", actor=client_actor(who.name)
        )
        return empty_pb2.Empty()

    @unary
    async def RotateToken(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        parts = request.parent.split("/")  # namespaces/NS or namespaces/NS/clients/NAME; _caller checks it
        kind = parts[2] if len(parts) == 4 else None
        who, _, _ = await self._caller(context, request.parent, kind)
        token, expiry = await self.auth.issue("Client", who.namespace, who.name, who.uid)
        rotated = audit_event(
            who.namespace,
            "client",
            who.name,
            "rotated",
            client_actor(who.name),
            "TokenRotated",
            "token rotated",
        )
        await self.auth.revoke(jti=who.jti, audit=[rotated])  # the old token stops working now
        return client_pb2.RotateTokenResponse(token=token, expiry=timestamp(expiry))
