"""controllerd runs the boards' health checks (issue 12) as a client would, and records the result.

A check takes a lease of its own for the board (the internal client `jumpstarter-health`,
`out_of_service_ok`: it may get an unhealthy or maintenance board and goes ahead of the
queue), then calls the board's built-in `health.run()` (exporterd/health.py) through routerd
with our own client library, exactly as a remote client does, and releases the lease. The
result sets the board's state (healthy/unhealthy; a board in maintenance stays there) and is
audited with its output, duration, trigger and who asked. Triggers: on demand (admin), on a
schedule, after every N leases of a board, and when a board comes back online; the automatic
ones run only for boards whose driver report has the `health` driver, one check per board.
"""

from __future__ import annotations

import asyncio
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from controllerd import audit
from controllerd.auth import TokenAuthority
from controllerd.board_states import HEALTHY, MAINTENANCE, UNHEALTHY, change
from controllerd.config import HealthSettings
from controllerd.errors import FailedPrecondition
from controllerd.health_notify import Notifier
from controllerd.records import Client, Exporter, Lease, uuid7
from controllerd.scheduler import LeaseScheduler
from controllerd.store import NotFound, Store
from jumpstarter.backoff import Deadline

log = structlog.get_logger("controllerd.health")

HEALTH_CLIENT = "jumpstarter-health"  # the controller's own client identity, one per namespace
ACTOR = "health"
CHILD = "health"  # the built-in driver's name in a board's tree (exporterd/health.py)
TOKEN_TTL = 86400.0  # the internal client's token; a new one is issued when half of it is gone
GRANT_POLL = 0.2  # seconds between looks at whether the check's lease was granted
MAX_OUTPUT = 4096  # characters of a check's output kept in its result
# A check blocks a thread for as long as it runs (minutes): on threads of its own, never the loop's
# default executor, which the Kubernetes store and leader election wait on (a lab-wide round of
# checks there would hold up every store write and the leader's renewal).
CHECK_THREADS = 64
Key = tuple[str, str]


@dataclass
class CheckOutcome:
    ok: bool
    output: str
    duration: float


def has_health_check(exporter: Exporter) -> bool:
    """Its last driver report has the built-in `health` driver under its root."""
    roots = {d.get("uuid") for d in exporter.devices if not d.get("parent_uuid")}
    return any(
        d.get("parent_uuid") in roots and (d.get("labels") or {}).get("jumpstarter.dev/name") == CHILD
        for d in exporter.devices
    )


def _call_through_router(config: Any, lease_name: str, acquire_wait: float) -> CheckOutcome:
    """(in a thread) Attach to the check's lease as a client and call `health.run()` on the board."""
    from jumpstarter.client.remote import lease as remote_lease

    started = time.monotonic()
    try:
        with remote_lease(
            lease_name=lease_name, client=config, acquisition_timeout=acquire_wait, show_hook_logs=False
        ) as root:
            health = root.children.get(CHILD)
            if health is None:
                return CheckOutcome(
                    False, "the board declares no health check (exporter config `health:`)", 0.0
                )
            result = health.call("run")
    except Exception as exc:  # noqa: BLE001 - a board we cannot reach or drive is not healthy
        return CheckOutcome(False, f"the check could not run: {exc}", round(time.monotonic() - started, 3))
    return CheckOutcome(
        bool(result.get("ok")), str(result.get("output", ""))[-MAX_OUTPUT:], float(result.get("duration", 0))
    )


class HealthChecker:
    def __init__(
        self,
        store: Store,
        scheduler: LeaseScheduler,
        auth: TokenAuthority,
        ca_pem: bytes,
        settings: HealthSettings,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.auth = auth
        self.ca = base64.b64encode(ca_pem).decode()
        self.settings = settings
        self.notifier = Notifier(settings.notify)
        self.running: set[Key] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.leases_since: dict[Key, int] = {}  # ordinary leases ended since the last check
        self._tokens: dict[str, tuple[str, float]] = {}  # namespace -> (token, expiry)
        self._threads = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="health-check")

    # -- one check -------------------------------------------------------------------------

    async def run(self, namespace: str, name: str, trigger: str, actor: str) -> dict[str, Any]:
        """Check one board now (waiting for it if it is leased); its result, after it is recorded."""
        exporter = await self.store.get_exporter(namespace, name)  # NOT_FOUND before anything is made
        if not has_health_check(exporter):
            raise FailedPrecondition(
                f"exporter {namespace}/{name} declares no health check (`health:` in its exporter config)"
            )
        if not self.scheduler.online(exporter):
            raise FailedPrecondition(f"exporter {namespace}/{name} is offline: nothing to check")
        key = (namespace, name)
        if key in self.running:
            raise FailedPrecondition(f"a health check of {namespace}/{name} is already running")
        self.running.add(key)
        self.leases_since[key] = 0
        try:
            config = await self._client_config(namespace)
            lease = Lease(
                namespace,
                uuid7(),
                HEALTH_CLIENT,
                exporter_name=name,
                duration=self.settings.lease_duration,
                allow_disabled=True,
                out_of_service_ok=True,
                tags={"jumpstarter.dev/purpose": "health-check"},
            )
            lease = await self.scheduler.submit(lease, actor=actor)
            try:
                await self._granted(lease)
                outcome = await self._check(config, lease.name)
            finally:
                held = await self.store.get_lease(namespace, lease.name)
                await self.scheduler.release(held, "Released", "health check done", actor=ACTOR)
            return await self._record(namespace, name, outcome, trigger, actor, lease.name)
        finally:
            self.running.discard(key)

    async def _check(self, config: Any, lease_name: str) -> CheckOutcome:
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, _call_through_router, config, lease_name, self.settings.acquire_wait
        )

    async def _granted(self, lease: Lease) -> None:
        """Wait until the check's lease has the board; FailedPrecondition (nothing recorded) if it stays busy."""
        deadline = Deadline(self.settings.acquire_wait)
        while not (await self.store.get_lease(lease.namespace, lease.name)).active:
            if not deadline.allows(GRANT_POLL):
                raise FailedPrecondition(
                    f"exporter {lease.exporter_name} stayed busy for {self.settings.acquire_wait:g}s: not checked"
                )
            await asyncio.sleep(GRANT_POLL)

    async def _client_config(self, namespace: str) -> Any:
        """The internal client's config in `namespace` (created, and its token issued, when needed)."""
        from jumpstarter.config.client import ClientConfig

        try:
            client = await self.store.get_client(namespace, HEALTH_CLIENT)
        except NotFound:
            client = Client(namespace, HEALTH_CLIENT)
            created = audit.event(
                namespace,
                "client",
                HEALTH_CLIENT,
                "created",
                ACTOR,
                "Created",
                "the controller's health checks",
            )
            await self.store.save_client(client, [created])
            self._tokens.pop(namespace, None)
        token, expiry = self._tokens.get(namespace, ("", 0.0))
        if expiry - time.time() < TOKEN_TTL / 2:
            token, expiry = await self.auth.issue("Client", namespace, HEALTH_CLIENT, client.uid, TOKEN_TTL)
            self._tokens[namespace] = (token, expiry)
        return ClientConfig(namespace, HEALTH_CLIENT, self.auth.endpoint, token, self.ca)

    async def _record(
        self, namespace: str, name: str, outcome: CheckOutcome, trigger: str, actor: str, lease: str
    ) -> dict[str, Any]:
        exporter = await self.store.get_exporter(namespace, name)
        previous = exporter.health
        last = outcome.output.strip().splitlines()[-1] if outcome.output.strip() else ""
        if exporter.health == MAINTENANCE:  # a check never takes a board out of maintenance
            state, reason = MAINTENANCE, exporter.health_reason
        elif outcome.ok:
            state, reason = HEALTHY, ""
        else:
            state, reason = UNHEALTHY, f"health check failed: {last}"
        event = change(
            exporter,
            state,
            reason,
            actor,
            "health-check",
            "HealthCheckPassed" if outcome.ok else "HealthCheckFailed",
            ok=outcome.ok,
            duration=outcome.duration,
            trigger=trigger,
            lease=lease,
            output=outcome.output[-250:],
        )
        event.message = audit.bounded(
            f"{event.message}; {outcome.duration:g}s; output: {outcome.output[-300:]}"
        )
        await self.store.save_exporter(exporter, [event])
        await self.scheduler.poke()
        self.notifier.state_changed(exporter, previous)
        log.info(
            "health check", exporter=name, namespace=namespace, ok=outcome.ok, state=state, trigger=trigger
        )
        return {
            "name": name,
            "ok": outcome.ok,
            "state": state,
            "reason": exporter.health_reason,
            "output": outcome.output,
            "duration": outcome.duration,
            "trigger": trigger,
            "actor": actor,
            "time": event.time,
        }

    # -- automatic triggers (never block the caller: each starts a task) -------------------------

    def request(self, namespace: str, name: str, trigger: str) -> None:
        """Check the board soon if it declares a check, is online and is not being checked; logged, never raised.
        Only the replica that schedules starts automatic checks (the others would each check too)."""
        if (namespace, name) in self.running or not self.scheduler.leading():
            return

        async def check() -> None:
            try:
                exporter = await self.store.get_exporter(namespace, name)
                if has_health_check(exporter) and self.scheduler.online(exporter):
                    await self.run(namespace, name, trigger, ACTOR)
            except Exception as exc:  # noqa: BLE001 - a failed automatic check is logged, never fatal
                log.warning("health check not run", exporter=name, trigger=trigger, error=str(exc))

        task = asyncio.get_running_loop().create_task(check(), name=f"health {name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def lease_event(self, kind: str, lease: Lease) -> None:
        """(the scheduler's on_event) Count the ordinary leases a board served, as each ends; after
        every N, check it: the board is free then and the check goes first (at the Nth grant the
        check would wait for that lease, and give up after `acquire_wait` when it is longer)."""
        every = self.settings.every_leases
        if not every or not lease.ended or lease.exporter is None or lease.client == HEALTH_CLIENT:
            return
        key = (lease.namespace, lease.exporter)
        self.leases_since[key] = self.leases_since.get(key, 0) + 1
        if self.leases_since[key] >= every:
            self.request(*key, f"after {every} leases")

    def came_online(self, exporter: Exporter) -> None:
        """(the online watch's callback) A board back from offline is checked first."""
        if self.settings.after_offline:
            self.request(exporter.namespace, exporter.name, "back online")

    async def schedule_forever(self) -> None:
        """Check every board that declares a check, every `interval` seconds (a task of main)."""
        interval = self.settings.interval
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                for exporter in await self.store.list_exporters():
                    if exporter.health != MAINTENANCE and has_health_check(exporter):
                        self.request(exporter.namespace, exporter.name, "scheduled")
            except Exception as exc:  # noqa: BLE001 - e.g. a busy disk: the next round tries again
                log.warning("scheduled health checks not started", error=str(exc))
