"""The audit history: building bounded events, querying them, pruning old ones.

Events are built here and handed to the store with the state change they record
(`store.save_lease(lease, audit=[...])`), so a crash never leaves one without the other.
Text is bounded and stripped of control characters; no event ever holds a token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from controllerd.records import AuditEvent, Exporter, ExporterStatus, Lease
from controllerd.store import Store
from jumpstarter.backoff import Backoff

log = structlog.get_logger("controllerd.audit")

KINDS = frozenset({"lease", "exporter", "client", "policy"})
MAX_TEXT = 512  # reason/message characters kept
MAX_DETAIL_TEXT = 256  # per detail value
MAX_QUERY = 10_000  # events one query returns
DEFAULT_QUERY = 1000
PRUNE_EVERY = 60.0  # seconds between prunes: cheap (indexed), and bounds a burst of records soon
PRUNE_RETRY = 5.0  # seconds before a failed prune is first tried again
SCHEDULER, ADMIN = "scheduler", "admin"


def bounded(text: str, limit: int = MAX_TEXT) -> str:
    """Printable text only (an exporter's status message is untrusted), at most `limit` characters."""
    clean = "".join(c if c.isprintable() else " " for c in text[: limit * 2])
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def client_actor(name: str) -> str:
    return f"client:{name}"


def exporter_actor(name: str) -> str:
    return f"exporter:{name}"


def labels_text(labels: dict[str, str]) -> str:
    """`a=1,b=2` (sorted; `-` for none): how audit messages show a label set."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _detail(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or isinstance(value, (bool, int, float)):
            out[key] = value
        else:
            out[key] = bounded(str(value), MAX_DETAIL_TEXT)
    return out


def lease_event(
    lease: Lease, action: str, actor: str, reason: str = "", message: str = "", **detail: Any
) -> AuditEvent:
    """An event about `lease`, naming its client and (once granted) its exporter."""
    return AuditEvent(
        lease.namespace,
        "lease",
        lease.name,
        action,
        actor,
        lease=lease.name,
        exporter=lease.exporter,
        client=lease.client,
        reason=bounded(reason),
        message=bounded(message),
        detail=_detail(detail),
    )


def event(
    namespace: str,
    kind: str,
    name: str,
    action: str,
    actor: str,
    reason: str = "",
    message: str = "",
    **detail: Any,
) -> AuditEvent:
    """An event about an exporter, client or policy."""
    assert kind in KINDS, kind
    return AuditEvent(
        namespace,
        kind,
        name,
        action,
        actor,
        exporter=name if kind == "exporter" else None,
        client=name if kind == "client" else None,
        reason=bounded(reason),
        message=bounded(message),
        detail=_detail(detail),
    )


def _iso(ts: float | None) -> str:
    return "none" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def lease_created(lease: Lease, actor: str) -> AuditEvent:
    pinned = f", exporter {lease.exporter_name}" if lease.exporter_name else ""
    return lease_event(
        lease,
        "created",
        actor,
        "Requested",
        f"selector {lease.selector or '-'}{pinned}",
        selector=lease.selector,
        exporter_name=lease.exporter_name,
        duration=lease.duration,
        begin_time=lease.begin_time,
        end_time=lease.end_time,
    )


def lease_granted(lease: Lease, now: float) -> AuditEvent:
    return lease_event(
        lease,
        "granted",
        SCHEDULER,
        "Acquired",
        f"exporter {lease.exporter} after {round(now - lease.created, 3)}s",
        priority=lease.priority,
        selector=lease.selector,
        exporter_name=lease.exporter_name,
    )


def lease_updated(
    lease: Lease,
    actor: str,
    owner: str,
    old_times: tuple[float | None, float | None, float | None],
    old_end: float | None,
) -> list[AuditEvent]:
    """What an UpdateLease changed: its end (extended when later), its client (transferred)."""
    events = []
    if (lease.duration, lease.begin_time, lease.end_time) != old_times:
        new_end = lease.deadline()
        longer = old_end is not None and new_end is not None and new_end > old_end
        events.append(
            lease_event(
                lease,
                "extended" if longer else "updated",
                actor,
                "Updated",
                f"end {_iso(old_end)} → {_iso(new_end)}",
                old_end=old_end,
                new_end=new_end,
                duration=lease.duration,
            )
        )
    if lease.client != owner:
        events.append(
            lease_event(
                lease,
                "transferred",
                actor,
                "Transferred",
                f"client {owner} → {lease.client}",
                from_client=owner,
                to_client=lease.client,
            )
        )
    return events


def _nothing(exporter: Exporter) -> None:
    pass


class OnlineWatch:
    """Audits exporters going on- and offline, as the scheduler sees them on each pass.

    Online is derived (heartbeats, the clock), not stored: so these events stand alone. The
    first look after a start records nothing, since what was before is unknown."""

    def __init__(self, store: Store, online: Callable[[Exporter], bool], offline_after: float) -> None:
        self.store = store
        self.online = online
        self.offline_after = offline_after
        self.seen: dict[tuple[str, str], bool] = {}
        self.been_online: set[tuple[str, str]] = set()
        self.on_online: Callable[[Exporter], None] = _nothing  # a board back from offline (health checks)

    def offline_reason(self, exporter: Exporter) -> str:
        if exporter.status == ExporterStatus.OFFLINE:  # it said goodbye
            return f"the exporter went offline: {exporter.status_message or 'unregistered'}"
        return f"no word from the exporter for {self.offline_after:g}s"

    async def look(self, exporters: dict[tuple[str, str], Exporter]) -> set[tuple[str, str]]:
        """Audit each change since the last look; returns the exporters online now (one pass's view)."""
        changed = []
        now_online: set[tuple[str, str]] = set()
        for key, exporter in exporters.items():
            online = self.online(exporter)
            before = self.seen.get(key)
            if online:
                now_online.add(key)
                if before is False and key in self.been_online:  # back from offline, not its first contact
                    self.on_online(exporter)
                self.been_online.add(key)
            if before is not None and before != online:
                changed.append(
                    event(
                        exporter.namespace,
                        "exporter",
                        exporter.name,
                        "online" if online else "offline",
                        SCHEDULER,
                        "ExporterOnline" if online else "ExporterOffline",
                        "the exporter is online" if online else self.offline_reason(exporter),
                    )
                )
            self.seen[key] = online
        if len(self.seen) > len(exporters):  # deleted exporters (their deletion is audited by admin)
            for key in [k for k in self.seen if k not in exporters]:
                del self.seen[key]
                self.been_online.discard(key)
        if changed:
            await self.store.append_audit(changed)
        return now_online


@dataclass
class AuditQuery:
    """Which events to return: all filters must match; the newest `limit`, oldest first."""

    namespace: str | None = None
    lease: str | None = None
    exporter: str | None = None
    client: str | None = None
    since: float | None = None  # POSIX seconds
    limit: int = DEFAULT_QUERY


def query_from_args(args: dict[str, Any]) -> AuditQuery:
    """Validate the admin socket's `audit` arguments (names bounded, limit in range)."""

    def name(key: str) -> str | None:
        value = args.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str) or len(value) > 253:
            raise ValueError(f"{key} must be a name of at most 253 characters")
        return value.rsplit("/", 1)[-1]  # namespaces/NS/leases/ID works as well as ID

    since = args.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
        raise ValueError("since must be POSIX seconds")
    limit = args.get("limit", DEFAULT_QUERY)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_QUERY}")
    return AuditQuery(
        name("namespace"),
        name("lease"),
        name("exporter"),
        name("client"),
        float(since) if since is not None else None,
        limit,
    )


async def prune(store: Store, retention_days: float, max_records: int) -> int:
    """Drop events older than the retention, and the oldest beyond `max_records`."""
    removed = await store.prune_audit(time.time() - retention_days * 86400, max_records)
    if removed:
        log.info("audit pruned", removed=removed, retention_days=retention_days, max_records=max_records)
    return removed


async def prune_forever(store: Store, retention_days: float, max_records: int) -> None:
    """Prune at start and then every PRUNE_EVERY seconds (a task of controllerd's main)."""
    retry = Backoff(start=PRUNE_RETRY, cap=PRUNE_EVERY)  # after a failure: sooner, then back to the period
    while True:
        try:
            await prune(store, retention_days, max_records)
            retry.reset()
            pause = PRUNE_EVERY
        except Exception as exc:  # noqa: BLE001 - a busy or full disk now: try again
            pause = retry.next_pause() or PRUNE_EVERY
            log.warning("audit prune failed", error=str(exc), retry_in=pause)
        await asyncio.sleep(pause)
