"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it:
one controller replica schedules, the others serve reads and take over when it stops renewing.

The Lease names its holder (`spec.holderIdentity`) and how long a claim lasts
(`leaseDurationSeconds`); the holder renews `renewTime` every `retry` seconds. Every write is a
replace at the resourceVersion just read, so two candidates never both win. A candidate judges
expiry by its own monotonic clock from when it last saw the record change (never by comparing
the holder's clock to its own), and a leader that cannot renew within `renew_deadline` stops
leading before its claim can have expired for the others (renew_deadline < duration).
The holder also advertises where its gRPC port is (annotation ADDRESS_ANNOTATION): the other
replicas forward calls there (controllerd/replica.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from controllerd.errors import Conflict, NotFound, StorageError
from controllerd.hub import Hub
from controllerd.scheduler import LeaseScheduler
from controllerd.store import Store

if TYPE_CHECKING:
    from controllerd.store.kube_client import Api

log = structlog.get_logger("leader")

GROUP, VERSION, PLURAL = "coordination.k8s.io", "v1", "leases"
LEASE_NAME = "jumpstarter-controller"
ADDRESS_ANNOTATION = "jumpstarter.dev/leader-address"


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # metav1.MicroTime


class LeaderElector:
    def __init__(
        self,
        api: Api,
        identity: str,
        *,
        name: str = LEASE_NAME,
        duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry: float = 2.0,
        address: str | None = None,
    ) -> None:
        if not 0 < retry < renew_deadline < duration:
            raise ValueError("leader election needs 0 < retry < renew_deadline < duration")
        self.api, self.identity, self.name = api, identity, name
        self.duration, self.renew_deadline, self.retry = duration, renew_deadline, retry
        self.leading = False
        self.address = address  # host:port the other replicas reach this one at (None: not advertised)
        self.leader: tuple[str, str | None] | None = None  # (holder, its address) last seen; None: nobody
        self.on_change: Callable[[], None] = lambda: None  # leading or leader changed (on the loop)
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions) last seen
        self._observed_at = 0.0  # monotonic time it was seen to change

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True if this replica holds the lease now."""
        return await asyncio.to_thread(self._try_blocking)

    def _try_blocking(self) -> bool:
        now = _micro_time()
        try:
            current = self.api.get(GROUP, VERSION, PLURAL, self.name)
        except NotFound:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.api.namespace},
                "spec": self._spec(now, now, 0),
            }
            self._advertise(body)
            try:
                self.api.create(GROUP, VERSION, PLURAL, body)
                self.leader = (self.identity, self.address)
                return True
            except Conflict:  # another candidate created it first
                return False
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        self.leader = (holder, annotations.get(ADDRESS_ANNOTATION)) if holder else None
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False  # held by a live leader
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            current["spec"] = dict(spec, **self._spec(spec.get("acquireTime") or now, now, transitions))
        else:
            current["spec"] = self._spec(now, now, transitions + 1)
        self._advertise(current)
        try:
            self.api.replace(GROUP, VERSION, PLURAL, current)
        except StorageError:  # a 409: someone else wrote first; or the API is unreachable
            return False
        self._observed, self._observed_at = None, time.monotonic()
        self.leader = (self.identity, self.address)
        return True

    def _advertise(self, body: dict[str, Any]) -> None:
        metadata = body.setdefault("metadata", {})
        annotations = dict(metadata.get("annotations") or {})
        annotations.pop(ADDRESS_ANNOTATION, None)  # never leave the previous holder's address
        if self.address:
            annotations[ADDRESS_ANNOTATION] = self.address
        metadata["annotations"] = annotations

    def _spec(self, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Forever: wait to be elected, run `lead()` while leading, cancel it when leadership is lost."""
        while True:
            while not await self._safe_try():
                await asyncio.sleep(self.retry)
            self.leading = True
            self.on_change()
            log.info("elected leader", identity=self.identity, lease=self.name)
            task = asyncio.create_task(lead())
            try:
                await self._renew_until_lost(task)
            finally:
                self.leading = False
                self.on_change()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.warning("stopped leading", identity=self.identity)

    async def _renew_until_lost(self, task: asyncio.Task[None]) -> None:
        """Renew while `task` runs; returns when leadership is lost. If `task` fails, its error is
        raised here: the caller stops, and the lease expires for another replica to take over."""
        last_renewed = time.monotonic()
        while not task.done():
            await asyncio.sleep(self.retry)
            if await self._safe_try():
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self.renew_deadline or self._held_by_other():
                return
        task.result()  # lead() returned or failed: its error (or this return) ends run()
        raise RuntimeError("the leader's work ended while it was leading")

    def _held_by_other(self) -> bool:
        return self._observed is not None and self._observed[0] not in ("", self.identity)

    async def _safe_try(self) -> bool:
        before = self.leader
        try:
            return await self._try()
        except (StorageError, NotFound) as exc:
            log.warning("leader election: API call failed", error=str(exc))
            return False
        finally:
            if self.leader != before:
                self.on_change()

    async def release(self) -> None:
        """On a clean shutdown: give the lease up at once so another replica need not wait it out."""
        if not self.leading:
            return

        def give_up() -> None:
            current = self.api.get(GROUP, VERSION, PLURAL, self.name)
            spec = current.get("spec") or {}
            if spec.get("holderIdentity") == self.identity:
                current["spec"] = dict(
                    spec, holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time()
                )
                ((current.get("metadata") or {}).get("annotations") or {}).pop(ADDRESS_ANNOTATION, None)
                self.api.replace(GROUP, VERSION, PLURAL, current)

        with contextlib.suppress(StorageError, NotFound):
            await asyncio.to_thread(give_up)
        self.leading = False


def replicate(
    store: Store,
    hub: Hub,
    scheduler: LeaseScheduler,
    identity: str | None = None,
    address: str | None = None,
) -> LeaderElector | None:
    """Wire a replica of a Kubernetes-backed controller: watches wake the scheduler and tell exporter
    streams about lease changes made elsewhere; only the elected replica plans. None for SQLite.

    Run `elector.run(scheduler.run)` instead of `scheduler.run()`; call it from the event loop."""
    kube = sys.modules.get("controllerd.store.kubernetes")  # not imported: not a Kubernetes store
    if kube is None or not isinstance(store, kube.KubernetesStore):
        return None
    loop = asyncio.get_running_loop()

    def react(plural: str, obj: dict[str, Any] | None) -> None:
        hub.wake_scheduler()
        if plural == "leases" and obj is not None:  # granted or ended by another replica
            exporter = ((obj.get("status") or {}).get("exporterRef") or {}).get("name")
            if exporter:
                hub.exporter_changed(store.namespace, exporter)

    store.on_change = lambda plural, obj: loop.call_soon_threadsafe(react, plural, obj)
    name = identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    elector = LeaderElector(store.api, name, address=address)
    scheduler.leading = lambda: elector.leading
    return elector
