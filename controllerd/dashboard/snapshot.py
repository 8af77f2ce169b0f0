"""What the dashboard shows, built from the store on the controller's event loop.

A snapshot is one JSON document: the boards (state, health, labels, online, holder and lease
end, the queue for each with positions), recent lease and board history from the audit
table, and the health of the controller and its routers. It is built at most once per
FRESH seconds per namespace however many pages ask, so open pages add no load to the store.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from controllerd.audit import AuditQuery
from controllerd.dashboard.routers import RouterProbe
from controllerd.queue_positions import queue_order
from controllerd.records import Exporter, ExporterStatus, Lease
from controllerd.scheduler import LeaseScheduler
from controllerd.store import Store
from jumpstarter import __version__
from jumpstarter.selector import SelectorError, parse

FRESH = 1.0  # seconds a built snapshot is served before it is built again
HISTORY = 60  # recent events shown
HISTORY_KINDS = frozenset({"lease", "exporter"})
QUEUE_SHOWN = 10  # waiting leases listed per board (the rest are counted): bounds the document
MAX_SCOPES = 64  # namespaces cached at once (each logged-in namespace is one)


def _status_name(status: int) -> str:
    try:
        return ExporterStatus(status).name
    except ValueError:
        return str(status)


def _request(lease: Lease) -> tuple[str, str, str]:
    """What a waiting lease asks for: leases asking the same share one match per board."""
    return (lease.namespace, lease.exporter_name or "", "" if lease.exporter_name else lease.selector)


def _wants(request: tuple[str, str, str], board: Exporter) -> bool:
    """Whether a waiting request could be granted `board` (its pinned name, else its selector)."""
    namespace, pinned, selector = request
    if namespace != board.namespace:
        return False
    if pinned:
        return pinned == board.name
    try:
        return parse(selector).matches(board.labels)
    except SelectorError:
        return False


def _queue_entry(lease: Lease, position: int) -> dict[str, Any]:
    ready = lease.condition("Pending")
    return {
        "lease": lease.name,
        "client": lease.client,
        "position": position,
        "since": lease.created,
        "begin_time": lease.begin_time,
        "why": ready.message if ready is not None else "",
    }


class Snapshots:
    def __init__(
        self,
        store: Store,
        scheduler: LeaseScheduler,
        routers: RouterProbe,
        endpoint: str,
        scheduler_state: Callable[[], str] = lambda: "running",
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.routers = routers
        self.endpoint = endpoint
        self.scheduler_state = scheduler_state
        self.started = time.time()
        self._cache: dict[str | None, tuple[float, bytes]] = {}
        self._building: dict[str | None, asyncio.Lock] = {}

    async def get(self, namespace: str | None) -> bytes:
        """The snapshot (JSON bytes) of one namespace (None: every namespace), at most FRESH seconds old."""
        lock = self._building.setdefault(namespace, asyncio.Lock())
        async with lock:  # pages asking together share one build
            cached = self._cache.get(namespace)
            if cached is not None and time.monotonic() - cached[0] < FRESH:
                return cached[1]
            body = json.dumps(await self.build(namespace), separators=(",", ":")).encode()
            if len(self._cache) >= MAX_SCOPES and namespace not in self._cache:
                oldest = min(self._cache, key=lambda k: self._cache[k][0])
                del self._cache[oldest]
                self._building.pop(oldest, None)
            self._cache[namespace] = (time.monotonic(), body)
            return body

    async def build(self, namespace: str | None) -> dict[str, Any]:
        store_state = "ok"
        try:
            boards = await self._boards(namespace)
            history = await self._history(namespace)
        except Exception as exc:  # noqa: BLE001 - the page says the store failed instead of going blank
            store_state, boards, history = f"error: {exc}", [], []
        stats = self.scheduler.stats
        return {  # no build time in it: an unchanged lab gives the same bytes, and no SSE push
            "namespace": namespace,
            "controller": {
                "endpoint": self.endpoint,
                "version": __version__,
                "started": self.started,
                "scheduler": self.scheduler_state(),
                "store": store_state,
                "leases_active": stats.get("active", 0),
                "leases_pending": stats.get("pending", 0),
                "boards_online": stats.get("online", 0),
            },
            "routers": [asdict(r) for r in self.routers.routers],
            "boards": boards,
            "history": history,
        }

    async def _boards(self, namespace: str | None) -> list[dict[str, Any]]:
        exporters = await self.store.list_exporters(namespace)
        leases = await self.store.list_leases(namespace, only_active=True)
        holders = {(le.namespace, le.exporter): le for le in leases if le.active}
        # in the scheduler's order (the priority is the one it wrote with the lease's Pending reason)
        waiting = sorted((le for le in leases if le.pending), key=lambda le: queue_order(le, le.priority))
        boards = []
        requests = [_request(le) for le in waiting]
        distinct = list(dict.fromkeys(requests))
        for board in sorted(exporters, key=lambda e: (e.namespace, e.name)):
            lease = holders.get((board.namespace, board.name))
            wanted = {r for r in distinct if _wants(r, board)}  # once per distinct request, not per lease
            queue = [le for le, r in zip(waiting, requests, strict=True) if r in wanted] if wanted else []
            boards.append(
                {
                    "namespace": board.namespace,
                    "name": board.name,
                    "labels": board.labels,
                    "online": self.scheduler.online(board),
                    "enabled": board.enabled,
                    "status": _status_name(board.status),
                    "status_message": board.status_message,
                    "health": board.health,
                    "health_reason": board.health_reason,
                    "last_seen": board.last_seen,
                    "holder": lease.client if lease else None,
                    "lease": lease.name if lease else None,
                    "lease_end": lease.deadline() if lease else None,
                    "paused": lease.paused if lease else False,
                    "queue": [_queue_entry(le, i) for i, le in enumerate(queue[:QUEUE_SHOWN], 1)],
                    "queue_length": len(queue),
                }
            )
        return boards

    async def _history(self, namespace: str | None) -> list[dict[str, Any]]:
        events = await self.store.list_audit(AuditQuery(namespace=namespace, limit=HISTORY * 4))
        shown = [e for e in reversed(events) if e.kind in HISTORY_KINDS][:HISTORY]  # newest first
        keys = ("id", "time", "kind", "name", "action", "actor", "exporter", "client", "reason", "message")
        return [{k: getattr(e, k) for k in keys} for e in shown]
