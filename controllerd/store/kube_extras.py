"""Our own kinds on Kubernetes (group lab.jumpstarter.dev, not upstream's): token records, the audit
history, and the counters that order leases and audit events.

`ControllerSequence` objects are counters advanced by compare-and-swap on their resourceVersion,
so two controller replicas never hand out the same lease `seq` or audit id, and ids keep growing
after pruning (the counter is never deleted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controllerd.errors import Conflict, NotFound
from controllerd.records import AuditEvent, TokenRecord
from controllerd.store import kube_codec as codec
from controllerd.store.kube_client import Api, StaleWrite

if TYPE_CHECKING:
    from controllerd.audit import AuditQuery

G, V = codec.OUR_GROUP, codec.VERSION
TRIES = 50  # a counter is contended by every replica's writes: more patience than one record


class Extras:
    def __init__(self, api: Api) -> None:
        self.api = api

    # -- counters -----------------------------------------------------------------------

    def next_ids(self, counter: str, count: int) -> int:
        """Reserve `count` consecutive numbers of `counter`; returns the first (numbers start at 1)."""
        for _ in range(TRIES):
            try:
                obj = self.api.get(G, V, "controllersequences", counter)
            except NotFound:
                body = {
                    "apiVersion": f"{G}/{V}",
                    "kind": "ControllerSequence",
                    "metadata": {"name": counter, "namespace": self.api.namespace},
                    "spec": {"next": 1 + count},
                }
                try:
                    self.api.create(G, V, "controllersequences", body)
                    return 1
                except Conflict:
                    continue
            first = int((obj.get("spec") or {}).get("next") or 1)
            obj["spec"] = {"next": first + count}
            try:
                self.api.replace(G, V, "controllersequences", obj)
                return first
            except StaleWrite:
                continue
        raise StaleWrite(f"counter {counter}: too many concurrent writers; nothing stored")

    # -- tokens ---------------------------------------------------------------------------

    def save_tokens(self, tokens: list[TokenRecord]) -> None:
        for token in tokens:
            name = f"jti-{token.jti}"
            for _ in range(TRIES):
                try:
                    base = self.api.get(G, V, "controllertokens", name)
                except NotFound:
                    base = None
                body = codec.token_object(token, self.api.namespace, base)
                try:
                    if base is None:
                        self.api.create(G, V, "controllertokens", body)
                    else:
                        self.api.replace(G, V, "controllertokens", body)
                    break
                except (StaleWrite, Conflict):
                    continue
            else:
                raise StaleWrite(f"token {token.jti}: too many concurrent writers; nothing stored")

    def list_tokens(self, subject: str | None, revoked_only: bool = False) -> list[TokenRecord]:
        listed = self.api.list(G, V, "controllertokens", "revoked=true" if revoked_only else "")
        tokens = [codec.token_record(o) for o in listed.get("items") or []]
        return sorted((t for t in tokens if subject is None or t.subject == subject), key=lambda t: t.issued)

    # -- audit ----------------------------------------------------------------------------

    def append_audit(self, events: list[AuditEvent]) -> None:
        if not events:
            return
        first = self.next_ids("audit", len(events))
        for offset, event in enumerate(events):
            event.id = first + offset
            self.api.create(G, V, "auditevents", codec.audit_object(event, self.api.namespace))

    def _all_audit(self) -> list[AuditEvent]:
        items = self.api.list(G, V, "auditevents").get("items") or []
        return sorted((codec.audit_record(o) for o in items), key=lambda e: e.id)

    def list_audit(self, query: AuditQuery) -> list[AuditEvent]:
        def wanted(event: AuditEvent) -> bool:
            for column in ("namespace", "lease", "exporter", "client"):
                value = getattr(query, column)
                if value is not None and getattr(event, column) != value:
                    return False
            return query.since is None or event.time >= query.since

        matching = [e for e in self._all_audit() if wanted(e)]
        return matching[-query.limit :] if query.limit > 0 else []

    def prune_audit(self, before: float, max_records: int) -> int:
        events = self._all_audit()
        newest = events[-1].id if events else 0
        removed = 0
        for event in events:
            if event.time < before or event.id <= newest - max_records:
                try:
                    self.api.delete(G, V, "auditevents", f"audit-{event.id:016d}")
                    removed += 1
                except NotFound:
                    pass  # pruned meanwhile by another replica
        return removed
