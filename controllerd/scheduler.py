"""The lease scheduler: a real queue, and never two active leases on one exporter.

Pending leases wait in order of (policy priority desc, request time asc). On
every change (lease created or ended, exporter online/offline/ready, timer)
one pass walks the queue and gives each lease the best free, online, ready
exporter it may use. All state changes happen in this process under one lock,
and the SQLite store refuses a second active lease per exporter as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import structlog

from controllerd import audit
from controllerd.audit import SCHEDULER, lease_event
from controllerd.candidates import Candidates, Evaluation
from controllerd.hub import Hub
from controllerd.policy import PolicyDenied, held_for
from controllerd.records import Client, Exporter, Lease
from controllerd.store import Conflict, NotFound, StorageError, Store
from jumpstarter.selector import SelectorError, parse

log = structlog.get_logger("scheduler")

UNSPECIFIED, OFFLINE, AVAILABLE = 0, 1, 2
BEFORE_LEASE_HOOK, LEASE_READY, AFTER_LEASE_HOOK = 3, 4, 5
GRANTABLE_STATUS = frozenset({UNSPECIFIED, AVAILABLE})
MAX_TICK = 5.0  # re-check liveness at least this often
MAX_PENDING = 20  # pending leases per client unless controllerd.yaml says otherwise
STORAGE_RETRY = 1.0  # seconds before a pass that could not be stored (disk full) is tried again


class LeaseRequestError(ValueError):
    """A lease request that can never be valid (bad selector, times, limits)."""


class QuotaExceeded(Exception):
    """The client already has as many pending leases as the controller allows."""


def resolve_times(
    duration: float | None, begin: float | None, end: float | None
) -> tuple[float | None, float | None, float | None]:
    """Complete (duration, begin, end) as upstream does (reference §2.3)."""
    if duration is not None and duration <= 0:
        raise LeaseRequestError("duration must be positive")
    if begin is not None and end is not None:
        if end <= begin:
            raise LeaseRequestError("end_time must be after begin_time")
        if duration is not None and abs((end - begin) - duration) > 1e-3:
            raise LeaseRequestError("duration conflicts with begin_time and end_time")
        return end - begin, begin, end
    if end is not None:
        if duration is None:
            raise LeaseRequestError(
                "duration is required (must specify Duration, or both BeginTime and EndTime)"
            )
        begin = end - duration
        return duration, (begin if begin > time.time() else None), end
    if duration is None:
        raise LeaseRequestError("duration is required (must specify Duration, or both BeginTime and EndTime)")
    return duration, begin, None


class LeaseScheduler:
    def __init__(
        self,
        store: Store,
        hub: Hub,
        *,
        offline_after: float = 60.0,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str, Lease], None] | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.offline_after = offline_after
        self.max_pending = max_pending
        self.clock = clock
        self.lock = asyncio.Lock()
        self.on_event = on_event or (lambda kind, lease: None)
        self.stats = {
            "pending": 0,
            "active": 0,
            "online": 0,
            "evaluated": 0,
            "passes": 0,
        }  # evaluated: last pass
        self.watch = audit.OnlineWatch(store, self.online, offline_after)
        self._changes = 0  # lease changes made by requests
        self._planned = 0  # how many of them the latest pass started after

    # -- liveness --------------------------------------------------------------

    def online(self, exporter: Exporter) -> bool:
        if exporter.status == OFFLINE:
            return False
        if self.hub.connected(exporter.namespace, exporter.name):
            return True
        return exporter.last_seen is not None and self.clock() - exporter.last_seen < self.offline_after

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[None]:
        """The lock, and one store transaction: a change and the pass it triggers are stored whole or not at all."""
        async with self.lock:
            planned = self._planned
            try:
                with self.store.atomic():
                    yield
            except BaseException:  # a pass rolled back with the transaction (even at COMMIT) was not planned
                self._planned = planned
                raise

    # -- requests ----------------------------------------------------------------

    async def submit(self, lease: Lease, actor: str | None = None) -> Lease:
        """Validate and queue a new lease, then try to grant at once."""
        if not lease.selector and not lease.exporter_name:
            raise LeaseRequestError("a lease needs a selector or an exporter name")
        try:
            parse(lease.selector)
        except SelectorError as exc:
            raise LeaseRequestError(str(exc)) from None
        lease.duration, lease.begin_time, lease.end_time = resolve_times(
            lease.duration, lease.begin_time, lease.end_time
        )
        async with self._changing():  # count and create under one lock: concurrent requests cannot overshoot
            refused = await self._check_quota(lease.namespace, lease.client)
            if refused is None:
                lease.created = self.clock()
                lease.set_condition("Pending", "True", "Queued", "waiting for the scheduler")
                created = audit.lease_created(lease, actor or audit.client_actor(lease.client))
                await self.store.create_lease(lease, [created])
                self.on_event("created", lease)
                mine = self._changed()
        if refused is not None:  # raised after the transaction: the pass the count ran stays committed
            raise QuotaExceeded(refused)
        await self._replan(mine)
        return await self.store.get_lease(lease.namespace, lease.name)

    async def release(
        self,
        lease: Lease,
        reason: str = "Released",
        message: str = "released",
        *,
        actor: str = SCHEDULER,
        cause: str | None = None,
    ) -> Lease:
        """End `lease` for `actor`; `cause` (e.g. ExporterDeleted) audits it as ended for that cause."""
        async with self._changing():
            lease = await self.store.get_lease(lease.namespace, lease.name)
            if lease.ended:
                return lease
            lease.released = reason == "Released"
            await self._end(lease, "Ready", "False", reason, message, actor=actor, cause=cause)
            mine = self._changed()
        await self._replan(mine)
        return lease

    async def update(
        self, namespace: str, name: str, change: Callable[[Lease], None], actor: str = audit.ADMIN
    ) -> Lease:
        """Apply `change` (which may raise to refuse) to the stored lease, check it, save, re-plan.

        The lease is read under the lock, so a grant or release that happens meanwhile is never
        overwritten by a stale copy."""
        async with self._changing():
            lease = await self.store.get_lease(namespace, name)
            owner, old_end = lease.client, lease.deadline()
            old_times = (lease.duration, lease.begin_time, lease.end_time)
            change(lease)
            lease.duration, lease.begin_time, lease.end_time = resolve_times(
                lease.duration, lease.begin_time, lease.end_time
            )
            await self.check_policies(lease)
            refused = None
            if lease.pending and lease.client != owner:  # a transfer counts for the new owner
                refused = await self._check_quota(lease.namespace, lease.client)
            if refused is None:
                events = audit.lease_updated(lease, actor, owner, old_times, old_end)
                await self.store.save_lease(lease, events)
                if lease.exporter:
                    self.hub.exporter_changed(lease.namespace, lease.exporter)
                mine = self._changed()
        if refused is not None:  # raised after the transaction: the pass the count ran stays committed
            raise QuotaExceeded(refused)
        await self._replan(mine)
        return await self.store.get_lease(namespace, name)

    async def check_policies(self, lease: Lease) -> None:
        """Raise PolicyDenied unless a policy lets the lease's client hold its exporter (a pending
        lease: some exporter it matches) for as long as the lease now lasts; for UpdateLease.

        The pass's own evaluation (Candidates) decides, so an approved update is never then ended."""
        policies = await self.store.list_policies(lease.namespace)
        if not policies:
            return
        try:
            client: Client | None = await self.store.get_client(lease.namespace, lease.client)
        except NotFound:
            client = None
        exporters = {(e.namespace, e.name): e for e in await self.store.list_exporters(lease.namespace)}
        asked = lease
        if lease.exporter is not None:  # held: only its own exporter counts, whatever its labels now
            asked = dataclasses.replace(lease, selector="", exporter_name=lease.exporter, allow_disabled=True)
        now = self.clock()
        evaluation = Candidates(exporters, policies, now).evaluate(asked, client)
        if (
            not evaluation.candidates
            and evaluation.verdict is not None
            and evaluation.verdict[1] == "NoAccess"
        ):
            raise PolicyDenied(
                f"permission denied: no access policy lets client {lease.client} hold "
                f"{lease.exporter or lease.selector} for {round(held_for(lease, now))}s"
            )

    async def _check_quota(self, namespace: str, client: str) -> str | None:
        """Why `client` may not queue another lease, or None; may run a pass, which the caller commits."""
        pending = await self.store.count_pending_leases(namespace, client)
        if pending >= self.max_pending and self._planned < self._changes:
            await self._pass()  # leases of requests not planned yet may be granted: count after planning
            pending = await self.store.count_pending_leases(namespace, client)
        if pending >= self.max_pending:
            return (
                f"client {client} already has {pending} pending leases, the limit is {self.max_pending} "
                "(max_pending_leases in controllerd.yaml): release one or wait until one is granted"
            )
        return None

    def _changed(self) -> int:
        self._changes += 1
        return self._changes

    async def _replan(self, change: int) -> None:
        """Re-plan after request change number `change`, once it is stored.

        Requests that arrive together share one pass: each first lets the others that are ready
        store their changes, and a pass that started after a change already planned it. Under
        load that is one pass per burst instead of one per request (tests/bench/bench_load.py).
        """
        try:
            await asyncio.sleep(0)
            async with self._changing():
                if self._planned < change:
                    await self._pass()
        except StorageError as exc:  # the request is stored; the scheduler's loop plans it once writes work
            log.error("scheduler pass not stored; retrying", error=str(exc), retry_in=STORAGE_RETRY)
            self.hub.wake_scheduler()
        except asyncio.CancelledError:  # the caller went away: its change still gets planned
            if self._planned < change:
                self.hub.wake_scheduler()
            raise

    async def poke(self) -> None:
        """Something changed (an exporter registered, came online, became ready): re-plan."""
        async with self._changing():
            await self._pass()

    # -- the pass --------------------------------------------------------------

    async def _end(
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
        self.on_event(reason.lower(), lease)
        log.info(
            "lease ended", lease=lease.name, namespace=lease.namespace, reason=reason, exporter=lease.exporter
        )

    async def _pass(self) -> float | None:
        """Expire, pause/resume, then grant in queue order. Returns the next timer deadline."""
        now = self.clock()
        self._planned = self._changes  # restored by _changing() if the transaction rolls back
        self.stats["passes"] += 1
        return await self._plan(now)

    async def _plan(self, now: float) -> float | None:
        next_deadline: float | None = None

        def later(when: float | None) -> None:
            nonlocal next_deadline
            if when is not None and (next_deadline is None or when < next_deadline):
                next_deadline = when

        leases = await self.store.list_leases(only_active=True)
        self.stats["active"] = sum(1 for le in leases if le.active)
        self.stats["pending"] = sum(1 for le in leases if le.pending)
        exporters = {(e.namespace, e.name): e for e in await self.store.list_exporters()}
        self.stats["online"] = await self.watch.look(exporters)
        if not leases:  # nothing to expire, pause or grant
            return None
        busy: set[tuple[str, str]] = set()
        pending: list[Lease] = []
        for lease in leases:
            deadline = lease.deadline()
            if lease.active:
                if deadline is not None and deadline <= now:
                    # ended at the pass's time: a grant of its exporter later in this pass begins then too
                    await self._end(
                        lease, "Ready", "False", "Expired", "the lease reached its end time", at=now
                    )
                    continue
                later(deadline)
                busy.add((lease.namespace, lease.exporter or ""))
                exporter = exporters.get((lease.namespace, lease.exporter or ""))
                await self._pause_or_resume(lease, exporter)
                if (
                    exporter is not None
                    and not lease.paused
                    and not self.hub.connected(exporter.namespace, exporter.name)
                ):
                    later((exporter.last_seen or now) + self.offline_after)  # re-check when it goes offline
            else:
                if lease.end_time is not None and lease.end_time <= now:
                    await self._end(
                        lease, "Ready", "False", "Expired", "the lease ended before an exporter was free"
                    )
                    continue
                pending.append(lease)
        if not pending:
            return next_deadline
        candidates = Candidates(exporters, await self.store.list_policies(), now)
        clients: dict[tuple[str, str], Client | None] = {}
        decisions: list[tuple[Lease, Evaluation]] = []
        for lease in pending:
            key = (lease.namespace, lease.client)
            if key not in clients:
                try:
                    clients[key] = await self.store.get_client(*key)
                except NotFound:
                    clients[key] = None
            decisions.append((lease, candidates.evaluate(lease, clients[key])))
        self.stats["evaluated"] = candidates.evaluated
        decisions.sort(key=lambda d: (-d[1].priority, d[0].seq))
        waiting: list[tuple[Lease, Evaluation]] = []
        for lease, evaluation in decisions:
            if lease.begin_time is not None and lease.begin_time > now:
                later(lease.begin_time)
                await self._set_pending(
                    lease, "Scheduled", f"starts at {_iso(lease.begin_time)}", evaluation.priority
                )
                continue
            if evaluation.verdict is not None:
                ctype, reason, message = evaluation.verdict
                await self._end(lease, ctype, "True", reason, message)
                continue
            choice = self._choose(evaluation, busy)
            if choice is None:
                waiting.append((lease, evaluation))
                continue
            priority, exporter = choice
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
                continue
            busy.add((lease.namespace, exporter.name))
            self.hub.exporter_changed(lease.namespace, exporter.name)
            self.on_event("granted", lease)
            log.info(
                "lease granted",
                lease=lease.name,
                exporter=exporter.name,
                client=lease.client,
                waited=round(now - lease.created, 3),
            )
            later(lease.deadline())
        await self._report_waits(waiting, busy)
        return next_deadline

    def _choose(self, evaluation: Evaluation, busy: set[tuple[str, str]]) -> tuple[int, Exporter] | None:
        if evaluation.exhausted:
            return None
        usable = [
            (p, e)
            for p, e in evaluation.candidates
            if (e.namespace, e.name) not in busy and self.online(e) and e.status in GRANTABLE_STATUS
        ]
        if not usable:
            evaluation.exhausted = True
            return None
        usable.sort(key=lambda pe: (-pe[0], pe[1].name))
        return usable[0]

    async def _report_waits(
        self, waiting: list[tuple[Lease, Evaluation]], busy: set[tuple[str, str]]
    ) -> None:
        """Tell each waiting lease why, and how many waiting leases ahead of it compete for its exporters."""
        groups: dict[frozenset[tuple[str, str]], int] = {}  # distinct candidate sets -> group number
        group_keys: list[frozenset[tuple[str, str]]] = []
        group_of: dict[int, int] = {}  # id(evaluation) -> group number
        overlap: dict[tuple[int, int], bool] = {}
        ahead: dict[int, int] = {}  # group number -> waiting leases seen so far
        reasons: dict[int, tuple[str, str]] = {}
        for lease, evaluation in waiting:
            if id(evaluation) not in group_of:
                keys = evaluation.keys
                if keys not in groups:
                    groups[keys] = len(group_keys)
                    group_keys.append(keys)
                group_of[id(evaluation)] = groups[keys]
                reasons[id(evaluation)] = self._wait_reason(evaluation, busy)
            group = group_of[id(evaluation)]
            competing = 0
            for other, count in ahead.items():
                if (group, other) not in overlap:
                    overlap[(group, other)] = not group_keys[group].isdisjoint(group_keys[other])
                competing += count if overlap[(group, other)] else 0
            ahead[group] = ahead.get(group, 0) + 1
            reason, message = reasons[id(evaluation)]
            await self._set_pending(
                lease, reason, f"{message}; queue position {competing + 1}", evaluation.priority
            )

    def _wait_reason(self, evaluation: Evaluation, busy: set[tuple[str, str]]) -> tuple[str, str]:
        candidates = [e for _, e in evaluation.candidates]
        online = [e for e in candidates if self.online(e)]
        if not online:
            return "Offline", f"all {len(candidates)} matching exporters are offline"
        if all((e.namespace, e.name) in busy for e in online):
            return "NotAvailable", f"all {len(online)} matching online exporters are leased"
        return "NotReady", "the matching exporters are still cleaning up after a lease"

    async def _set_pending(self, lease: Lease, reason: str, message: str, priority: int) -> None:
        current = lease.condition("Pending")
        if current is None or (current.reason, current.message) != (reason, message):
            # audited once, when the first pass places it: positions shift too often to log each
            first = current is None or current.reason == "Queued"
            events = (
                [lease_event(lease, "queued", SCHEDULER, reason, message, priority=priority)] if first else []
            )
            lease.set_condition("Pending", "True", reason, message)
            await self.store.save_lease(lease, events)

    async def _pause_or_resume(self, lease: Lease, exporter: Exporter | None) -> None:
        online = exporter is not None and self.online(exporter)
        if not online and not lease.paused:
            lease.paused = True
            lease.set_condition(
                "Paused",
                "True",
                "ExporterOffline",
                "the exporter went offline; the lease resumes when it returns",
            )
            why = "exporter deleted" if exporter is None else self.watch.offline_reason(exporter)
            await self.store.save_lease(
                lease, [lease_event(lease, "paused", SCHEDULER, "ExporterOffline", why)]
            )
            self.on_event("paused", lease)
            log.warning("lease paused: exporter offline", lease=lease.name, exporter=lease.exporter)
        elif online and lease.paused:
            lease.paused = False
            lease.remove_condition("Paused")
            await self.store.save_lease(
                lease, [lease_event(lease, "resumed", SCHEDULER, "ExporterOnline", "the exporter is back")]
            )
            self.on_event("resumed", lease)
            log.info("lease resumed", lease=lease.name, exporter=lease.exporter)

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Re-plan on every wake-up and at every timer deadline (and every few seconds for liveness)."""
        while True:
            try:
                async with self._changing():
                    self.hub.scheduler_wakeup.clear()
                    deadline = await self._pass()
            except StorageError as exc:  # e.g. a full disk: nothing was stored, try again soon
                log.error("scheduler pass not stored; retrying", error=str(exc), retry_in=STORAGE_RETRY)
                deadline = self.clock() + STORAGE_RETRY
            delay = MAX_TICK if deadline is None else max(0.0, min(MAX_TICK, deadline - self.clock()))
            try:
                await asyncio.wait_for(self.hub.scheduler_wakeup.wait(), delay)
            except TimeoutError:
                pass


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
