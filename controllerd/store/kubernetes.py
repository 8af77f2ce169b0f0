"""Kubernetes store: Exporters, Clients, Leases and ExporterAccessPolicies as upstream's CRDs.

`open_store("kubernetes://NAMESPACE?kubeconfig=PATH&context=NAME")`: one namespace, as upstream's
controller (records of another namespace are refused). Reads come from informers (list + watch,
kube_client.py), so the scheduler sees what kubectl creates; every write is a replace with the
resourceVersion it was read at, and runs in a thread, never on the event loop.

No exporter is ever granted to two leases, even by two controller replicas: before a lease is
stored with an exporter, the store claims the exporter by setting its `status.leaseRef` (a
compare-and-swap on the Exporter's resourceVersion). A claim by another lease stands while that
lease is not ended and names no other exporter, so the second grant gets `Conflict`, as from
SQLite's unique index. Lease writes are strict: if the lease changed since it was read, the write
raises StaleWrite (a StorageError: the scheduler re-reads and plans again) instead of undoing
someone's grant or end; other kinds are upserts, retried on a 409 from the fresh object.

Kubernetes has no transaction across objects: audit events are written just after the change
they record (a failure is logged, the change stays), and `atomic()` groups nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from controllerd.errors import Conflict, InvalidArgument, NotFound, StorageError
from controllerd.records import AccessPolicy, AuditEvent, Client, Exporter, Lease, TokenRecord
from controllerd.store import kube_codec as codec
from controllerd.store.kube_client import RESYNC, Api, Informer, StaleWrite, version_of
from controllerd.store.kube_extras import Extras

if TYPE_CHECKING:
    from controllerd.audit import AuditQuery

log = structlog.get_logger("store.kubernetes")

G, V = codec.GROUP, codec.VERSION
R = TypeVar("R")
WRITE_TRIES = 8  # attempts of one upsert against concurrent writers before giving up
SYNC_TIMEOUT = 30.0  # seconds to wait for the first lists at start


def _remember(record: R, obj: codec.Object) -> R:
    """The stored object a record was read from: its next write is based on (and checked against) it."""
    vars(record)["_kube_object"] = obj
    return record


def _based_on(record: Any) -> codec.Object | None:
    return vars(record).get("_kube_object")  # type: ignore[no-any-return]


class Decoded:
    """Records decoded from objects, kept by name and resourceVersion: a scheduler pass reads every
    exporter and open lease, and decoding 1,000 objects each time would be most of its cost.
    Callers get copies (they change what they get); the copy keeps the object it came from."""

    def __init__(self, decode: Callable[[codec.Object], Any], copy_record: Callable[[Any], Any]) -> None:
        self.decode, self.copy_record = decode, copy_record
        self.records: dict[str, tuple[str, Any]] = {}

    def __call__(self, obj: codec.Object) -> Any:
        name, version = obj["metadata"]["name"], obj["metadata"].get("resourceVersion", "")
        cached = self.records.get(name)
        if cached is None or cached[0] != version or not version:
            cached = (version, _remember(self.decode(obj), obj))
            self.records[name] = cached
        return self.copy_record(cached[1])

    def only(self, objs: list[codec.Object]) -> None:
        """Forget records no longer listed (deleted exporters, ended leases)."""
        names = {o["metadata"]["name"] for o in objs}
        if len(self.records) > len(names):
            self.records = {n: r for n, r in self.records.items() if n in names}


def _copy_exporter(exporter: Exporter) -> Exporter:
    copied = copy.copy(exporter)  # __dict__ and all: the stored object it was read from too
    copied.labels = dict(exporter.labels)
    copied.devices = [dict(d) for d in exporter.devices]
    return copied


def _copy_lease(lease: Lease) -> Lease:
    copied = copy.copy(lease)
    copied.tags, copied.context = dict(lease.tags), dict(lease.context)
    copied.conditions = [copy.copy(c) for c in lease.conditions]
    return copied


def _parts(obj: codec.Object) -> tuple[codec.Object, Any]:
    main = {k: v for k, v in obj.items() if k != "status"}
    return main, obj.get("status")


class KubernetesStore:
    def __init__(self, api: Api, *, resync: float | None = None) -> None:
        self.api = api
        self.namespace = api.namespace
        # what the watches saw change (kind plural, object or None after a full list); informer threads
        self.on_change: Callable[[str, codec.Object | None], None] = lambda plural, obj: None
        every = RESYNC if resync is None else resync
        self.exporters = Informer(api, G, V, "exporters", self._changed, every)
        self.clients = Informer(api, G, V, "clients", self._changed, every)
        self.policies = Informer(api, G, V, "exporteraccesspolicies", self._changed, every)
        self.leases = Informer(api, G, V, "leases", self._changed, every, f"{codec.ENDED_LABEL}!=true")
        self.informers = (self.exporters, self.clients, self.policies, self.leases)
        self.extras = Extras(api)
        self._exporter = Decoded(codec.exporter_record, _copy_exporter)
        self._lease = Decoded(codec.lease_record, _copy_lease)
        for informer in self.informers:
            informer.start()
        for informer in self.informers:
            if not informer.synced.wait(SYNC_TIMEOUT):
                self.close()
                raise StorageError(
                    f"kubernetes store: could not list {informer.plural} within {SYNC_TIMEOUT:.0f}s"
                )

    def _changed(self, plural: str, obj: codec.Object | None) -> None:
        self.on_change(plural, obj)

    def close(self) -> None:
        for informer in self.informers:
            informer.stop()

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def _check(self, namespace: str | None) -> None:
        if namespace is not None and namespace != self.namespace:
            raise InvalidArgument(
                f"namespace {namespace!r}: this controller's Kubernetes store serves namespace {self.namespace!r}"
            )

    # -- generic writes (blocking; run in a thread) ---------------------------------------

    def _write(
        self, plural: str, informer: Informer | None, new: codec.Object, base: codec.Object | None
    ) -> codec.Object:
        """Create, or replace the changed parts (object, then /status) of `base` by `new`."""
        if base is None:
            stored = self.api.create(G, V, plural, new)
            base = stored
        main, status = _parts(new)
        old_main, old_status = _parts(base)
        stored = base
        if _meaningful(main) != _meaningful(old_main):
            main["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
            if "status" in stored:
                main["status"] = stored["status"]
            stored = self.api.replace(G, V, plural, main)
        if status is not None and status != stored.get("status"):
            body = dict(stored, status=status)
            stored = self.api.replace(G, V, plural, body, status=True)
        if informer is not None:
            informer.put(stored)
        return stored

    def _upsert(
        self,
        plural: str,
        informer: Informer,
        name: str,
        encode: Callable[[codec.Object | None], codec.Object],
    ) -> None:
        """Last writer wins on the record's fields (as SQLite's upsert); a 409 retries from the fresh object."""
        base = informer.get(name)
        for _ in range(WRITE_TRIES):
            try:
                self._write(plural, informer, encode(base), base)
                return
            except StaleWrite:
                pass
            except Conflict:  # created meanwhile by someone else
                pass
            try:
                base = self.api.get(G, V, plural, name)
            except NotFound:
                base = None
        raise StaleWrite(f"{plural}/{name}: still changing after {WRITE_TRIES} attempts; nothing stored")

    def _delete(self, plural: str, informer: Informer, name: str) -> None:
        current = self.api.get(G, V, plural, name)
        self.api.delete(G, V, plural, name)
        informer.forget(name, version_of(current) + 1)

    async def _run(self, call: Callable[..., R], *args: Any) -> R:
        return await asyncio.to_thread(call, *args)

    async def _audit(self, events: Sequence[AuditEvent]) -> None:
        """After the change: a failure here is logged, the change stays (no cross-object transaction)."""
        if not events:
            return
        try:
            await self._run(self.extras.append_audit, list(events))
        except StorageError as exc:
            log.error("audit events not stored", error=str(exc), events=len(events))

    # -- exporters ----------------------------------------------------------------------------

    async def get_exporter(self, namespace: str, name: str) -> Exporter:
        self._check(namespace)
        obj = self.exporters.get(name)
        if obj is None:
            raise NotFound(f"exporter {namespace}/{name} not found")
        return self._exporter(obj)  # type: ignore[no-any-return]

    async def list_exporters(self, namespace: str | None = None) -> list[Exporter]:
        if namespace not in (None, self.namespace):
            return []
        objs = sorted(self.exporters.snapshot(), key=lambda o: o["metadata"]["name"])
        self._exporter.only(objs)
        return [self._exporter(o) for o in objs]

    async def save_exporter(self, exporter: Exporter, audit: Sequence[AuditEvent] = ()) -> None:
        self._check(exporter.namespace)
        await self._run(
            self._upsert,
            "exporters",
            self.exporters,
            exporter.name,
            lambda base: codec.exporter_object(exporter, base),
        )
        await self._audit(audit)

    async def delete_exporter(self, namespace: str, name: str, audit: Sequence[AuditEvent] = ()) -> None:
        self._check(namespace)
        await self._run(self._delete, "exporters", self.exporters, name)
        await self._audit(audit)

    # -- clients ----------------------------------------------------------------------------

    async def get_client(self, namespace: str, name: str) -> Client:
        self._check(namespace)
        obj = self.clients.get(name)
        if obj is None:
            raise NotFound(f"client {namespace}/{name} not found")
        return codec.client_record(obj)

    async def list_clients(self, namespace: str | None = None) -> list[Client]:
        if namespace not in (None, self.namespace):
            return []
        return [
            codec.client_record(o)
            for o in sorted(self.clients.snapshot(), key=lambda o: o["metadata"]["name"])
        ]

    async def save_client(self, client: Client, audit: Sequence[AuditEvent] = ()) -> None:
        self._check(client.namespace)
        await self._run(
            self._upsert, "clients", self.clients, client.name, lambda base: codec.client_object(client, base)
        )
        await self._audit(audit)

    async def delete_client(self, namespace: str, name: str, audit: Sequence[AuditEvent] = ()) -> None:
        self._check(namespace)
        await self._run(self._delete, "clients", self.clients, name)
        await self._audit(audit)

    # -- leases -------------------------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> Lease:
        self._check(namespace)
        obj = self.leases.get(name)
        if obj is None:  # ended leases are not in the informer
            obj = await self._run(self.api.get, G, V, "leases", name)
            return _remember(codec.lease_record(obj), obj)
        return self._lease(obj)  # type: ignore[no-any-return]

    async def list_leases(self, namespace: str | None = None, *, only_active: bool = False) -> list[Lease]:
        if namespace not in (None, self.namespace):
            return []
        if only_active:
            objs = self.leases.snapshot()
            self._lease.only(objs)
            leases = [self._lease(o) for o in objs]
        else:
            objs = (await self._run(self.api.list, G, V, "leases"))["items"]
            leases = [_remember(codec.lease_record(o), o) for o in objs]
        return sorted(
            (le for le in leases if not (only_active and le.ended)), key=lambda le: (le.seq, le.name)
        )

    async def create_lease(self, lease: Lease, audit: Sequence[AuditEvent] = ()) -> Lease:
        self._check(lease.namespace)
        if lease.exporter is not None:
            raise InvalidArgument("a new lease is stored pending; the scheduler grants it")

        def create() -> codec.Object:
            lease.seq = self.extras.next_ids("leases", 1)
            try:
                return self._write("leases", self.leases, codec.lease_object(lease, None), None)
            except Conflict:
                raise Conflict(f"lease {lease.namespace}/{lease.name} already exists") from None

        _remember(lease, await self._run(create))
        await self._audit(audit)
        return lease

    async def save_lease(self, lease: Lease, audit: Sequence[AuditEvent] = ()) -> None:
        self._check(lease.namespace)
        stored = await self._run(self._save_lease, lease)
        _remember(lease, stored)
        await self._audit(audit)

    def _save_lease(self, lease: Lease) -> codec.Object:
        base = _based_on(lease)
        if base is None:  # not read from this store: as of now (an upsert, as in SQLite)
            base = self.leases.get(lease.name)
            if base is None:
                with contextlib.suppress(NotFound):
                    base = self.api.get(G, V, "leases", lease.name)
        before = codec.lease_record(base) if base is not None else None
        held = before.exporter if before is not None and before.active else None
        wanted = lease.exporter if lease.active else None
        if wanted is not None and wanted != held:
            self._claim(wanted, lease.name)
        # A failed write leaves the claim: clearing it could race a replica granting this same
        # lease this same exporter. A claim whose lease ended or went elsewhere is void (_holds).
        stored = self._write_strict(lease, base)
        if held is not None and held != wanted:
            self._unclaim(held, lease.name)
        return stored

    def _write_strict(self, lease: Lease, base: codec.Object | None) -> codec.Object:
        """Write `lease` over `base`; a 409 retries only if what the record says did not change."""
        for _ in range(WRITE_TRIES):
            try:
                return self._write("leases", self.leases, codec.lease_object(lease, base), base)
            except StaleWrite:
                if base is None:
                    raise
                fresh = self.api.get(G, V, "leases", lease.name)
                if codec.lease_record(fresh) != codec.lease_record(base):
                    self.leases.put(fresh)
                    raise StaleWrite(
                        f"lease {lease.namespace}/{lease.name} changed since it was read; nothing stored"
                    ) from None
                base = fresh  # only fields we do not map changed (an annotation, an owner reference)
        raise StaleWrite(f"lease {lease.namespace}/{lease.name}: still changing; nothing stored")

    def _claim(self, exporter: str, lease: str) -> None:
        """Set the exporter's status.leaseRef to `lease`, unless another lease holds it (Conflict)."""
        for _ in range(WRITE_TRIES):
            try:
                obj = self.api.get(G, V, "exporters", exporter)
            except NotFound:
                raise Conflict(f"exporter {self.namespace}/{exporter} does not exist") from None
            holder = codec.lease_ref(obj)
            if holder == lease:
                return
            if holder is not None and self._holds(holder, exporter):
                raise Conflict(f"exporter {self.namespace}/{exporter} is held by lease {holder}")
            status = dict(obj.get("status") or {}, leaseRef={"name": lease})
            try:
                self.exporters.put(self.api.replace(G, V, "exporters", dict(obj, status=status), status=True))
                return
            except StaleWrite:
                continue
        raise StaleWrite(f"exporter {self.namespace}/{exporter}: claim kept failing; nothing stored")

    def _holds(self, holder: str, exporter: str) -> bool:
        """Whether lease `holder` still holds (or is being granted) `exporter`: read fresh, never cached."""
        try:
            lease = codec.lease_record(self.api.get(G, V, "leases", holder))
        except NotFound:
            return False
        return not lease.ended and lease.exporter in (None, exporter)

    def _unclaim(self, exporter: str, lease: str) -> None:
        """Clear the exporter's leaseRef if `lease` has it; a failure only leaves a claim nobody honours."""
        try:
            for _ in range(WRITE_TRIES):
                obj = self.api.get(G, V, "exporters", exporter)
                if codec.lease_ref(obj) != lease:
                    return
                status = {k: v for k, v in (obj.get("status") or {}).items() if k != codec.LEASE_REF}
                try:
                    self.exporters.put(
                        self.api.replace(G, V, "exporters", dict(obj, status=status), status=True)
                    )
                    return
                except StaleWrite:
                    continue
        except (StorageError, NotFound) as exc:
            log.warning("exporter claim not cleared", exporter=exporter, lease=lease, error=str(exc))

    async def count_pending_leases(self, namespace: str, client: str) -> int:
        self._check(namespace)
        leases = [self._lease(o) for o in self.leases.snapshot()]
        return sum(1 for le in leases if le.pending and le.client == client)

    # -- policies -------------------------------------------------------------------------------

    async def list_policies(self, namespace: str | None = None) -> list[AccessPolicy]:
        if namespace not in (None, self.namespace):
            return []
        objs = sorted(self.policies.snapshot(), key=lambda o: o["metadata"]["name"])
        return sorted((p for o in objs for p in codec.policy_records(o)), key=lambda p: p.name)

    async def save_policy(self, policy: AccessPolicy, audit: Sequence[AuditEvent] = ()) -> None:
        self._check(policy.namespace)
        await self._run(
            self._upsert, "exporteraccesspolicies", self.policies, policy.name,
            lambda base: codec.policy_object(policy, base),
        )  # fmt: skip
        await self._audit(audit)

    async def delete_policy(self, namespace: str, name: str, audit: Sequence[AuditEvent] = ()) -> None:
        self._check(namespace)
        await self._run(self._delete, "exporteraccesspolicies", self.policies, name)
        await self._audit(audit)

    # -- tokens and audit: our own kinds (kube_extras.py) -----------------------------------------

    async def save_token(self, token: TokenRecord) -> None:
        await self._run(self.extras.save_tokens, [token])

    async def save_tokens(self, tokens: list[TokenRecord], audit: Sequence[AuditEvent] = ()) -> None:
        await self._run(self.extras.save_tokens, tokens)
        await self._audit(audit)

    async def list_tokens(self, subject: str | None = None) -> list[TokenRecord]:
        return await self._run(self.extras.list_tokens, subject)

    async def revoked_tokens(self) -> list[TokenRecord]:
        return await self._run(self.extras.list_tokens, None, True)  # selected by the API server

    async def append_audit(self, events: Sequence[AuditEvent]) -> None:
        await self._run(self.extras.append_audit, list(events))

    async def list_audit(self, query: AuditQuery) -> list[AuditEvent]:
        return await self._run(self.extras.list_audit, query)

    async def prune_audit(self, before: float, max_records: int) -> int:
        return await self._run(self.extras.prune_audit, before, max_records)


def _meaningful(main: codec.Object) -> codec.Object:
    """The parts of an object a write changes (not the server's bookkeeping)."""
    server = ("resourceVersion", "managedFields", "generation", "uid", "creationTimestamp", "selfLink")
    meta = {k: v for k, v in main.get("metadata", {}).items() if k not in server}
    return dict(main, metadata=meta)
