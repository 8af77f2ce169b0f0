"""How a lease changes state: its conditions, the audit event, the store write, and who is told.

Every transition the scheduler makes (grant, end, pause, resume, a new Pending reason) goes
through here, so each one is stored with its audit record and then announced the same way:
the exporter's watchers (`Hub.exporter_changed`), the scheduler's `on_event` (metrics), the log.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from controllerd import audit
from controllerd.audit import SCHEDULER, lease_event
from controllerd.hub import Hub
from controllerd.records import Exporter, Lease
from controllerd.store import Conflict, Store

log = structlog.get_logger("scheduler")


class LeaseTransitions:
    def __init__(
        self,
        store: Store,
        hub: Hub,
        clock: Callable[[], float],
        notify: Callable[[str, Lease], None],
        offline_reason: Callable[[Exporter], str],
    ) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.notify = notify
        self.offline_reason = offline_reason

    async def grant(self, lease: Lease, priority: int, exporter: Exporter, now: float) -> bool:
        """Give `exporter` to `lease` from `now`; False when the store refuses (a second active lease)."""
        lease.exporter = exporter.name
        lease.priority = priority
        lease.effective_begin = now
        lease.remove_condition("Pending")
        lease.set_condition("Ready", "True", "Ready", f"exporter {exporter.name} acquired")
        try:
            await self.store.save_lease(lease, [audit.lease_granted(lease, now)])
        except Conflict:  # the store caught what we must never do: reload next pass
            log.error(
                "refused a second active lease on one exporter", lease=lease.name, exporter=exporter.name
            )
            return False
        self.hub.exporter_changed(lease.namespace, exporter.name)
        self.notify("granted", lease)
        log.info(
            "lease granted",
            lease=lease.name,
            exporter=exporter.name,
            client=lease.client,
            waited=round(now - lease.created, 3),
        )
        return True

    async def end(
        self,
        lease: Lease,
        ctype: str,
        status: str,
        reason: str,
        message: str,
        *,
        actor: str = SCHEDULER,
        cause: str | None = None,
        at: float | None = None,
    ) -> None:
        """End `lease` (at `at`, else now) with condition `ctype`; `cause` audits it as ended for that cause."""
        action = (
            "ended"
            if cause
            else "released"
            if lease.released
            else "expired"
            if reason == "Expired"
            else "ended"
        )
        ended = lease_event(
            lease, action, actor, cause or reason, message, was_pending=lease.pending, condition=ctype
        )
        lease.ended = True
        lease.paused = False
        lease.effective_end = self.clock() if at is None else at
        lease.remove_condition("Pending")
        lease.remove_condition("Paused")
        lease.set_condition(ctype, status, reason, message)
        await self.store.save_lease(lease, [ended])
        if lease.exporter:
            self.hub.exporter_changed(lease.namespace, lease.exporter)
        self.notify(reason.lower(), lease)
        log.info(
            "lease ended", lease=lease.name, namespace=lease.namespace, reason=reason, exporter=lease.exporter
        )

    async def set_pending(self, lease: Lease, reason: str, message: str, priority: int) -> None:
        """Say why `lease` waits; stored only when that changed, audited only the first time."""
        current = lease.condition("Pending")
        if current is None or (current.reason, current.message) != (reason, message):
            # audited once, when the first pass places it: positions shift too often to log each
            first = current is None or current.reason == "Queued"
            events = (
                [lease_event(lease, "queued", SCHEDULER, reason, message, priority=priority)] if first else []
            )
            lease.set_condition("Pending", "True", reason, message)
            await self.store.save_lease(lease, events)

    async def pause_or_resume(self, lease: Lease, exporter: Exporter | None, online: bool) -> None:
        """Pause a held lease whose exporter is gone or offline; resume it when the exporter is back."""
        online = exporter is not None and online
        if not online and not lease.paused:
            lease.paused = True
            lease.set_condition(
                "Paused",
                "True",
                "ExporterOffline",
                "the exporter went offline; the lease resumes when it returns",
            )
            why = "exporter deleted" if exporter is None else self.offline_reason(exporter)
            await self.store.save_lease(
                lease, [lease_event(lease, "paused", SCHEDULER, "ExporterOffline", why)]
            )
            self.notify("paused", lease)
            log.warning("lease paused: exporter offline", lease=lease.name, exporter=lease.exporter)
        elif online and lease.paused:
            lease.paused = False
            lease.remove_condition("Paused")
            await self.store.save_lease(
                lease, [lease_event(lease, "resumed", SCHEDULER, "ExporterOnline", "the exporter is back")]
            )
            self.notify("resumed", lease)
            log.info("lease resumed", lease=lease.name, exporter=lease.exporter)
