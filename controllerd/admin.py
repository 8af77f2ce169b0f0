"""Administration over a unix socket on the controller host.

Who may administer is decided by the filesystem: the socket is mode 0600 (or
0660 with an admin group), so root or the controller's user on that host. The
calls are JSON documents carried by one gRPC method, `jumpstarter.admin.v1.Admin/Call`
(`{"op": "...", "args": {...}}`), used by `jumpstarter admin …`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from controllerd import audit
from controllerd.audit import ADMIN, query_from_args
from controllerd.auth import VIEWER, TokenAuthority, subject
from controllerd.board_states import MAINTENANCE, UNKNOWN, change, check_reason
from controllerd.errors import Conflict, FailedPrecondition, InvalidArgument, Unimplemented, status_of
from controllerd.health_checks import HEALTH_CLIENT, HealthChecker
from controllerd.records import AccessPolicy, Client, Exporter, Lease, new_uid, uuid7
from controllerd.scheduler import LeaseScheduler
from controllerd.store import NotFound, StorageError, Store
from jumpstarter import tls
from jumpstarter.names import check_host, check_labels, check_name, reserved
from jumpstarter.selector import parse

if TYPE_CHECKING:
    from controllerd.credentials import Credentials

log = structlog.get_logger("controllerd.admin")
MAX_REQUEST = 1024 * 1024
KINDS = {"clients", "exporters", "leases", "policies", "tokens"}


def _labels(args: dict[str, Any]) -> dict[str, str]:
    return check_labels(args.get("labels") or {})


def _new_name(args: dict[str, Any], kind: str) -> tuple[str, str]:
    """(namespace, name) of a record to create or act on: both DNS-1123 labels, checked first."""
    namespace = check_name(args.get("namespace") or "default", "namespace")
    return namespace, check_name(args.get("name"), f"{kind} name")


class Admin:
    def __init__(
        self,
        store: Store,
        scheduler: LeaseScheduler,
        auth: TokenAuthority,
        ca_pem: bytes,
        token_ttl: float,
        lab_ca: tls.LabCA | None = None,
        health: HealthChecker | None = None,
        dashboard_url: str = "",
        credentials: Credentials | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.auth = auth
        self.ca_pem = ca_pem
        self.token_ttl = token_ttl
        self.lab_ca = lab_ca
        self.health = health
        self.dashboard_url = dashboard_url  # handed out with viewer tokens ("" when the dashboard is off)
        self.credentials = (
            credentials  # Kubernetes store: tokens live in Secrets (controllerd/credentials.py)
        )
        self.ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "info": self.info,
            "create_client": self.create_client,
            "create_exporter": self.create_exporter,
            "create_viewer": self.create_viewer,
            "get": self.get,
            "delete": self.delete,
            "enable_exporter": self.enable_exporter,
            "label_exporter": self.label_exporter,
            "set_policy": self.set_policy,
            "delete_policy": self.delete_policy,
            "release_lease": self.release_lease,
            "revoke": self.revoke,
            "rotate": self.rotate,
            "issue_server_cert": self.issue_server_cert,
            "audit": self.audit_history,
            "exporter_maintenance": self.exporter_maintenance,
            "create_lease": self.create_lease,
            "health_run": self.health_run,
        }

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        body: dict[str, Any] = {}
        try:
            if len(request) > MAX_REQUEST:
                raise InvalidArgument("request too large")
            body = json.loads(request)
            op = self.ops.get(body.get("op", ""))
            if op is None:
                raise Unimplemented(f"unknown op {body.get('op')!r} (ops: {', '.join(sorted(self.ops))})")
            args = body.get("args") or {}
            result = await op(args)
            log.info("admin", op=body.get("op"), namespace=args.get("namespace"), name=args.get("name"))
            return json.dumps({"result": result}).encode()
        except Exception as exc:
            # a missing or mistyped argument; anything else not in the table is a bug: raised as is
            told = InvalidArgument(f"bad request: {exc}") if isinstance(exc, (KeyError, TypeError)) else exc
            status = status_of(told)
            if status is None:
                raise
            if isinstance(exc, StorageError):
                log.error("admin write refused by the store", op=body.get("op"), error=str(exc))
            await context.abort(*status)
        raise AssertionError("unreachable")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "jumpstarter.admin.v1.Admin",
            {"Call": grpc.unary_unary_rpc_method_handler(self.handle)},
        )

    # -- ops -------------------------------------------------------------------------

    async def info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"endpoint": self.auth.endpoint, "ca": self.ca_pem.decode()}

    async def issue_server_cert(self, args: dict[str, Any]) -> dict[str, Any]:
        """A server certificate signed by the lab CA (for a routerd on another host), with its key."""
        if self.lab_ca is None:
            raise FailedPrecondition(
                "this controller has no lab CA key (its certificates were configured by hand):"
                " issue the router's certificate with your own CA",
            )
        hosts = args.get("hosts")
        if not isinstance(hosts, list) or not 1 <= len(hosts) <= 16:
            raise InvalidArgument("hosts: expected 1 to 16 host names or IPs")
        names = [check_host(h) for h in hosts]
        cert_pem, key_pem = tls.issue(self.lab_ca, names)
        return {"cert": cert_pem.decode(), "key": key_pem.decode(), "ca": self.lab_ca.cert_pem.decode()}

    async def _issue(
        self, kind: str, namespace: str, name: str, uid: str, rotate: bool = False
    ) -> dict[str, Any]:
        if self.credentials is not None:  # Kubernetes: the token its Secret holds (one per resource)
            token, expiry = await self.credentials.ensure(kind, name, uid, force=rotate)
        else:
            token, expiry = await self.auth.issue(kind, namespace, name, uid, self.token_ttl)
        return {
            "namespace": namespace,
            "name": name,
            "token": token,
            "expiry": expiry,
            "endpoint": self.auth.endpoint,
            "ca": self.ca_pem.decode(),
        }

    async def create_client(self, args: dict[str, Any]) -> dict[str, Any]:
        namespace, name = _new_name(args, "client")
        if name == HEALTH_CLIENT:  # whoever held it could use, or end, the checker's out-of-service leases
            raise ValueError(f"client name {name!r} is reserved for the controller's health checks")
        labels = _labels(args)
        try:
            await self.store.get_client(namespace, name)
            raise Conflict(f"client {namespace}/{name} exists (rotate its token instead)")
        except NotFound:
            pass
        client = Client(namespace, name, labels=labels)
        created = audit.event(
            namespace, "client", name, "created", ADMIN, "Created", audit.labels_text(labels)
        )
        await self.store.save_client(client, [created])
        return await self._issue("Client", namespace, name, client.uid)

    async def create_exporter(self, args: dict[str, Any]) -> dict[str, Any]:
        namespace, name = _new_name(args, "exporter")
        labels = _labels(args)
        try:
            await self.store.get_exporter(namespace, name)
            raise Conflict(
                f"exporter {namespace}/{name} exists (rotate its token instead)",
            )
        except NotFound:
            pass
        exporter = Exporter(namespace, name, labels=labels)
        created = audit.event(
            namespace, "exporter", name, "created", ADMIN, "Created", audit.labels_text(labels)
        )
        await self.store.save_exporter(exporter, [created])
        self.scheduler.hub.wake_scheduler()
        return await self._issue("Exporter", namespace, name, exporter.uid)

    async def create_viewer(self, args: dict[str, Any]) -> dict[str, Any]:
        """A read-only dashboard identity: only its token exists (no record); gRPC refuses it."""
        namespace, name = _new_name(args, "viewer")
        if await self._live_viewer_tokens(namespace, name):
            raise Conflict(f"viewer {namespace}/{name} exists (revoke it first)")
        token, expiry = await self.auth.issue(VIEWER, namespace, name, new_uid(), self.token_ttl)
        return {
            "namespace": namespace,
            "name": name,
            "token": token,
            "expiry": expiry,
            "dashboard": self.dashboard_url,
        }

    async def _live_viewer_tokens(self, namespace: str, name: str) -> list[Any]:
        prefix = subject(VIEWER, namespace, name, "")
        return [t for t in await self.store.list_tokens() if t.subject.startswith(prefix) and not t.revoked]

    async def get(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        kind = args.get("kind")
        namespace = args.get("namespace")
        if kind not in KINDS:
            raise InvalidArgument(f"kind must be one of {', '.join(sorted(KINDS))}")
        records: list[Any]
        if kind == "clients":
            records = await self.store.list_clients(namespace)
        elif kind == "exporters":
            records = await self.store.list_exporters(namespace)
        elif kind == "leases":
            records = await self.store.list_leases(namespace, only_active=not args.get("all"))
        elif kind == "policies":
            records = await self.store.list_policies(namespace)
        else:
            records = await self.store.list_tokens()
        out = []
        for record in records:
            row = dataclasses.asdict(record)
            if isinstance(record, Exporter):
                row["online"] = self.scheduler.online(record)
                row.pop("devices", None)
            out.append(row)
        return out

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        kind, namespace, name = args.get("kind"), str(args.get("namespace") or "default"), str(args["name"])
        if kind == "clients":
            await self.store.get_client(namespace, name)
            for lease in await self.store.list_leases(namespace, only_active=True):
                if lease.client == name:
                    await self.scheduler.release(
                        lease, "Released", "client deleted", actor=ADMIN, cause="ClientDeleted"
                    )
            deleted = audit.event(
                namespace, "client", name, "deleted", ADMIN, "Deleted", "its tokens are revoked"
            )
            await self.store.delete_client(namespace, name, [deleted])
            revoked = await self.auth.revoke(subject_prefix=f"client:{namespace}:{name}:")
        elif kind == "exporters":
            await self.store.get_exporter(namespace, name)
            for lease in await self.store.list_leases(namespace, only_active=True):
                if lease.exporter == name:
                    await self.scheduler.release(
                        lease, "Released", "exporter deleted", actor=ADMIN, cause="ExporterDeleted"
                    )
            deleted = audit.event(
                namespace, "exporter", name, "deleted", ADMIN, "Deleted", "its tokens are revoked"
            )
            await self.store.delete_exporter(namespace, name, [deleted])
            revoked = await self.auth.revoke(subject_prefix=f"exporter:{namespace}:{name}:")
            await self.scheduler.poke()
        else:
            raise InvalidArgument("delete clients or exporters (policies: delete_policy)")
        return {"deleted": f"{namespace}/{name}", "tokens_revoked": revoked}

    async def enable_exporter(self, args: dict[str, Any]) -> dict[str, Any]:
        exporter = await self.store.get_exporter(str(args.get("namespace") or "default"), str(args["name"]))
        exporter.enabled = bool(args.get("enabled", True))
        action = "enabled" if exporter.enabled else "disabled"
        changed = audit.event(
            exporter.namespace, "exporter", exporter.name, action, ADMIN, action.capitalize()
        )
        await self.store.save_exporter(exporter, [changed])
        await self.scheduler.poke()
        return {"name": exporter.name, "enabled": exporter.enabled}

    async def label_exporter(self, args: dict[str, Any]) -> dict[str, Any]:
        exporter = await self.store.get_exporter(str(args.get("namespace") or "default"), str(args["name"]))
        system = {k: v for k, v in exporter.labels.items() if reserved(k)}
        old = exporter.labels
        exporter.labels = {**_labels(args), **system}
        relabeled = audit.event(
            exporter.namespace,
            "exporter",
            exporter.name,
            "labeled",
            ADMIN,
            "Labeled",
            f"{audit.labels_text(old)} → {audit.labels_text(exporter.labels)}",
        )
        await self.store.save_exporter(exporter, [relabeled])
        await self.scheduler.poke()
        return {"name": exporter.name, "labels": exporter.labels}

    async def set_policy(self, args: dict[str, Any]) -> dict[str, Any]:
        namespace, name = _new_name(args, "policy")
        policy = AccessPolicy(
            namespace,
            name,
            exporter_selector=str(parse(str(args.get("exporter_selector") or ""))),
            client_selector=str(parse(str(args.get("client_selector") or ""))),
            priority=int(args.get("priority") or 0),
            maximum_duration=float(args["maximum_duration"]) if args.get("maximum_duration") else None,
        )
        saved = audit.event(
            namespace,
            "policy",
            name,
            "set",
            ADMIN,
            "PolicySet",
            f"exporters {policy.exporter_selector or '*'}, clients {policy.client_selector or '*'}, "
            f"priority {policy.priority}, maximum duration {policy.maximum_duration}",
        )
        await self.store.save_policy(policy, [saved])
        await self.scheduler.poke()
        return dataclasses.asdict(policy)

    async def delete_policy(self, args: dict[str, Any]) -> dict[str, Any]:
        namespace, name = str(args.get("namespace") or "default"), str(args["name"])
        deleted = audit.event(namespace, "policy", name, "deleted", ADMIN, "PolicyDeleted")
        await self.store.delete_policy(namespace, name, [deleted])
        await self.scheduler.poke()
        return {"deleted": args["name"]}

    async def release_lease(self, args: dict[str, Any]) -> dict[str, Any]:
        lease = await self.store.get_lease(str(args.get("namespace") or "default"), str(args["name"]))
        lease = await self.scheduler.release(lease, "Released", "released by an administrator", actor=ADMIN)
        return {"name": lease.name, "ended": lease.ended}

    async def revoke(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("jti"):
            jti = str(args["jti"])
            records = [r for r in await self.store.list_tokens() if r.jti == jti and not r.revoked]
            if not records:
                return {"revoked": 0}  # nothing changed: nothing to audit
            kind = records[0].kind.lower()
            revoked = audit.event(
                records[0].namespace, kind, records[0].name, "revoked", ADMIN, "TokenRevoked", f"token {jti}"
            )
            return {"revoked": await self.auth.revoke(jti=jti, audit=[revoked])}
        kind = str(args.get("kind", "")).rstrip("s")
        if kind == "viewer":  # tokens only: nothing else to delete, and the audit table has no viewers
            namespace, name = _new_name(args, kind)
            if not await self._live_viewer_tokens(namespace, name):
                raise NotFound(f"viewer {namespace}/{name} has no live token")
            return {"revoked": await self.auth.revoke(subject_prefix=subject(VIEWER, namespace, name, ""))}
        if kind not in ("client", "exporter"):
            raise InvalidArgument("revoke needs jti, or kind (client/exporter/viewer) and name")
        namespace, name = _new_name(args, kind)  # bounded, before anything is looked up or stored
        await self._record(kind, namespace, name)  # NOT_FOUND: nobody to revoke, nothing to audit
        revoked = audit.event(namespace, kind, name, "revoked", ADMIN, "TokenRevoked", "every token revoked")
        prefix = f"{kind}:{namespace}:{name}:"
        return {"revoked": await self.auth.revoke(subject_prefix=prefix, audit=[revoked])}

    async def _record(self, kind: str, namespace: str, name: str) -> Client | Exporter:
        if kind == "client":
            return await self.store.get_client(namespace, name)
        if kind == "exporter":
            return await self.store.get_exporter(namespace, name)
        raise InvalidArgument(f"kind must be client or exporter, not {kind!r}")

    async def rotate(self, args: dict[str, Any]) -> dict[str, Any]:
        kind = str(args.get("kind", "")).rstrip("s")
        namespace, name = str(args.get("namespace") or "default"), str(args["name"])
        record = await self._record(kind, namespace, name)
        rotated = audit.event(namespace, kind, name, "rotated", ADMIN, "TokenRotated", "older tokens revoked")
        await self.auth.revoke(
            subject_prefix=subject(kind, namespace, name, ""), audit=[rotated]
        )  # every older token
        return await self._issue(kind.capitalize(), namespace, name, record.uid, rotate=True)

    async def audit_history(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The audit history matching `lease`, `exporter`, `client`, `since` (POSIX seconds), newest last."""
        events = await self.store.list_audit(query_from_args(args))
        return [dataclasses.asdict(e) for e in events]

    async def exporter_maintenance(self, args: dict[str, Any]) -> dict[str, Any]:
        """Take a board out of service with a reason (`done`: put it back, its state unknown until checked)."""
        namespace, name = _new_name(args, "exporter")
        done = bool(args.get("done"))
        reason = "" if done else check_reason(args.get("reason"))  # checked before anything is read or stored
        exporter = await self.store.get_exporter(namespace, name)
        previous = exporter.health
        if done:
            if exporter.health != MAINTENANCE:
                raise FailedPrecondition(
                    f"exporter {namespace}/{name} is not in maintenance ({exporter.health})"
                )
            event = change(exporter, UNKNOWN, "", ADMIN, "in-service", "MaintenanceDone")
        else:
            event = change(exporter, MAINTENANCE, reason, ADMIN, "maintenance", "Maintenance")
        await self.store.save_exporter(exporter, [event])
        await self.scheduler.poke()
        if self.health is not None:
            self.health.notifier.state_changed(exporter, previous)
            if done:  # back in service: check it now when it declares a check
                self.health.request(namespace, name, "maintenance done")
        return {"name": exporter.name, "state": exporter.health, "reason": exporter.health_reason}

    async def create_lease(self, args: dict[str, Any]) -> dict[str, Any]:
        """An administrator's explicit lease of one board for a client: granted whatever the board's
        state (maintenance, unhealthy) and ahead of ordinary leases; the client uses it by name."""
        namespace, client = _new_name({**args, "name": args.get("client")}, "client")
        exporter = check_name(args.get("exporter"), "exporter name")
        duration = args.get("duration")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0:
            raise InvalidArgument("duration: positive seconds")
        await self.store.get_client(namespace, client)
        await self.store.get_exporter(namespace, exporter)
        lease = Lease(
            namespace,
            uuid7(),
            client,
            exporter_name=exporter,
            duration=float(duration),
            allow_disabled=True,
            out_of_service_ok=True,
        )
        lease = await self.scheduler.submit(lease, actor=ADMIN)
        return {
            "name": lease.name,
            "client": client,
            "exporter": lease.exporter or exporter,
            "ready": lease.active,
        }

    async def health_run(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run a board's health check now (waits for the board if it is leased); the recorded result."""
        namespace, name = _new_name(args, "exporter")
        if self.health is None:
            raise FailedPrecondition("this controller runs no health checks")
        return await self.health.run(namespace, name, "on demand", ADMIN)
