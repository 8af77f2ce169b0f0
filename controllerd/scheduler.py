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
from dataclasses import dataclass, field

import structlog

from controllerd import audit
from controllerd.audit import SCHEDULER
from controllerd.board_states import out_of_service_text
from controllerd.candidates import Candidates, Evaluation, ExporterKey
from controllerd.errors import ResourceExhausted
from controllerd.hub import Hub
from controllerd.policy import PolicyDenied, held_for
from controllerd.queue_positions import queue_order, queue_positions
from controllerd.records import Client, Exporter, ExporterStatus, Lease
from controllerd.store import NotFound, StorageError, Store
from controllerd.transitions import LeaseTransitions
from controllerd.validate import LeaseRequestError, resolve_times
from jumpstarter.backoff import Backoff
from jumpstarter.selector import SelectorError, parse

log = structlog.get_logger("scheduler")

GRANTABLE_STATUS = frozenset({ExporterStatus.UNSPECIFIED, ExporterStatus.AVAILABLE})
MAX_TICK = 5.0  # re-check liveness at least this often
MAX_PENDING = 20  # pending leases per client unless controllerd.yaml says otherwise
STORAGE_RETRY = 1.0  # seconds before a pass that could not be stored (disk full) is first tried again


class QuotaExceeded(ResourceExhausted):
    """The client already has as many pending leases as the controller allows."""


@dataclass
class Plan:
    """What one pass works from: its time, the exporters it read, which are online and taken, its next timer."""

    now: float
    exporters: dict[ExporterKey, Exporter]
    online: set[ExporterKey]
    busy: set[ExporterKey] = field(default_factory=set)
    next_deadline: float | None = None

    def later(self, when: float | None) -> None:
        """Have the scheduler run again by `when` (if that is sooner than what it has)."""
        if when is not None and (self.next_deadline is None or when < self.next_deadline):
            self.next_deadline = when


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
        # on_event is read at each call: metrics (controllerd/metrics.py) sets it after construction
        self.leases = LeaseTransitions(
            store, hub, clock, lambda kind, lease: self.on_event(kind, lease), self.watch.offline_reason
        )
        self._changes = 0  # lease changes made by requests
        self._planned = 0  # how many of them the latest pass started after
        # only the elected replica plans (controllerd/leader.py sets this on the Kubernetes store)
        self.leading: Callable[[], bool] = lambda: True

    # -- liveness --------------------------------------------------------------

    def online(self, exporter: Exporter) -> bool:
        if exporter.status == ExporterStatus.OFFLINE:
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
            await self.leases.end(lease, "Ready", "False", reason, message, actor=actor, cause=cause)
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

    async def _pass(self) -> float | None:
        """Take stock, expire and hold, queue, grant in order, write positions; returns the next timer."""
        if not self.leading():  # another replica schedules; this one stores requests and serves reads
            return None
        self._planned = self._changes  # restored by _changing() if the transaction rolls back
        self.stats["passes"] += 1
        leases, plan = await self._take_stock(self.clock())
        if not leases:  # nothing to expire, pause or grant
            return None
        pending = await self._expire_and_hold(leases, plan)
        if not pending:
            return plan.next_deadline
        queue = await self._queue(pending, plan)
        waiting = await self._grant_in_order(queue, plan)
        await self._write_queue_positions(waiting, plan)
        return plan.next_deadline

    async def _take_stock(self, now: float) -> tuple[list[Lease], Plan]:
        """Read the active leases and the exporters, see which are online (audited), update stats."""
        leases = await self.store.list_leases(only_active=True)
        self.stats["active"] = sum(1 for le in leases if le.active)
        self.stats["pending"] = sum(1 for le in leases if le.pending)
        exporters = {(e.namespace, e.name): e for e in await self.store.list_exporters()}
        online = await self.watch.look(exporters)
        self.stats["online"] = len(online)
        return leases, Plan(now, exporters, online)

    async def _expire_and_hold(self, leases: list[Lease], plan: Plan) -> list[Lease]:
        """End leases past their end time, keep the held ones; returns the pending leases left."""
        pending: list[Lease] = []
        for lease in leases:
            if lease.active:
                await self._expire_or_hold(lease, plan)
            elif lease.end_time is not None and lease.end_time <= plan.now:
                await self.leases.end(
                    lease, "Ready", "False", "Expired", "the lease ended before an exporter was free"
                )
            else:
                pending.append(lease)
        return pending

    async def _expire_or_hold(self, lease: Lease, plan: Plan) -> None:
        """An active lease: ended at its deadline, else its exporter is taken and it pauses/resumes with it."""
        deadline = lease.deadline()
        if deadline is not None and deadline <= plan.now:
            # ended at the pass's time: a grant of its exporter later in this pass begins then too
            await self.leases.end(
                lease, "Ready", "False", "Expired", "the lease reached its end time", at=plan.now
            )
            return
        plan.later(deadline)
        key = (lease.namespace, lease.exporter or "")
        plan.busy.add(key)
        exporter = plan.exporters.get(key)
        await self.leases.pause_or_resume(lease, exporter, key in plan.online)
        if exporter is not None and not lease.paused and not self.hub.connected(*key):
            plan.later((exporter.last_seen or plan.now) + self.offline_after)  # re-check when it goes offline

    async def _queue(self, pending: list[Lease], plan: Plan) -> list[tuple[Lease, Evaluation]]:
        """Evaluate the pending leases (once per distinct request), in grant order: priority, then arrival."""
        candidates = Candidates(plan.exporters, await self.store.list_policies(), plan.now)
        clients: dict[tuple[str, str], Client | None] = {}
        queue: list[tuple[Lease, Evaluation]] = []
        for lease in pending:
            key = (lease.namespace, lease.client)
            if key not in clients:
                try:
                    clients[key] = await self.store.get_client(*key)
                except NotFound:
                    clients[key] = None
            queue.append((lease, candidates.evaluate(lease, clients[key])))
        self.stats["evaluated"] = candidates.evaluated
        queue.sort(key=lambda d: queue_order(d[0], d[1].priority))
        return queue

    async def _grant_in_order(
        self, queue: list[tuple[Lease, Evaluation]], plan: Plan
    ) -> list[tuple[Lease, Evaluation]]:
        """Walk the queue: schedule later starts, end the ungrantable, grant free exporters; returns who waits."""
        waiting: list[tuple[Lease, Evaluation]] = []
        for lease, evaluation in queue:
            if lease.begin_time is not None and lease.begin_time > plan.now:
                plan.later(lease.begin_time)
                await self.leases.set_pending(
                    lease, "Scheduled", f"starts at {_iso(lease.begin_time)}", evaluation.priority
                )
            elif evaluation.verdict is not None:
                ctype, reason, message = evaluation.verdict
                await self.leases.end(lease, ctype, "True", reason, message)
            elif (choice := self._choose(evaluation, plan)) is not None:
                priority, exporter = choice
                if await self.leases.grant(lease, priority, exporter, plan.now):
                    plan.busy.add((lease.namespace, exporter.name))
                    plan.later(lease.deadline())
            else:
                waiting.append((lease, evaluation))
        return waiting

    def _choose(self, evaluation: Evaluation, plan: Plan) -> tuple[int, Exporter] | None:
        """The best usable candidate: free, online and ready, highest priority first, then by name."""
        if evaluation.exhausted:
            return None
        for priority, exporter in evaluation.candidates:  # in that order (Candidates sorts them)
            key = (exporter.namespace, exporter.name)
            if key not in plan.busy and key in plan.online and exporter.status in GRANTABLE_STATUS:
                return priority, exporter
        evaluation.exhausted = True  # the busy set only grows within a pass
        return None

    async def _write_queue_positions(self, waiting: list[tuple[Lease, Evaluation]], plan: Plan) -> None:
        """Tell each waiting lease why, and how many waiting leases ahead of it compete for its exporters."""
        reasons: dict[int, tuple[str, str]] = {}  # id(evaluation) -> why its leases wait
        for (lease, evaluation), position in zip(waiting, queue_positions(waiting), strict=True):
            if id(evaluation) not in reasons:
                reasons[id(evaluation)] = self._wait_reason(evaluation, plan)
            reason, message = reasons[id(evaluation)]
            await self.leases.set_pending(
                lease, reason, f"{message}; queue position {position}", evaluation.priority
            )

    def _wait_reason(self, evaluation: Evaluation, plan: Plan) -> tuple[str, str]:
        """Why the leases of `evaluation` wait: their exporters are out of service, offline, leased, or not ready."""
        candidates = [e for _, e in evaluation.candidates]
        if not candidates:  # all it may have are unhealthy or in maintenance
            return "OutOfService", out_of_service_text(evaluation.out_of_service)
        online = [e for e in candidates if (e.namespace, e.name) in plan.online]
        if not online:
            return "Offline", f"all {len(candidates)} matching exporters are offline"
        if all((e.namespace, e.name) in plan.busy for e in online):
            return "NotAvailable", f"all {len(online)} matching online exporters are leased"
        return "NotReady", "the matching exporters are still cleaning up after a lease"

    # -- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Re-plan on every wake-up and at every timer deadline (and every few seconds for liveness)."""
        retry = Backoff(start=STORAGE_RETRY, cap=MAX_TICK)  # no deadline: the scheduler never gives up
        while True:
            try:
                async with self._changing():
                    self.hub.scheduler_wakeup.clear()
                    deadline = await self._pass()
                retry.reset()
            except StorageError as exc:  # e.g. a full disk: nothing was stored, try again soon
                pause = retry.next_pause() or MAX_TICK
                log.error("scheduler pass not stored; retrying", error=str(exc), retry_in=pause)
                deadline = self.clock() + pause
            delay = MAX_TICK if deadline is None else max(0.0, min(MAX_TICK, deadline - self.clock()))
            try:
                await asyncio.wait_for(self.hub.scheduler_wakeup.wait(), delay)
            except TimeoutError:
                pass


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
