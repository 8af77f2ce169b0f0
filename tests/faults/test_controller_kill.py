"""controllerd killed with SIGKILL and restarted at random moments under lease traffic.

20 clients run create / wait / extend / release / transfer on 12 exporters (2 real exporterd
processes, 10 `LightExporter`s) while a chaos thread kills controllerd at seeded random
moments and starts it again. Afterwards the SQLite store (read directly) and what the clients
saw must agree: no exporter held by two leases at once, no granted lease lost, the queue in
order. JUMPSTARTER_FAULT_SEED replays a run, JUMPSTARTER_FAULT_SCALE multiplies the load.
"""

from __future__ import annotations

import json
import queue
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import pytest

from jumpstarter.cli.admin import call
from jumpstarter.client.v1 import client_pb2
from tests.integration.audit_checks import audit_problems
from tests.integration.central import (
    Central,
    Identity,
    Peer,
    StubExporter,
    condition,
    is_true,
    seconds,
    short,
    wait_until,
)

from .conftest import LightExporter, fault_scale, fault_seed, spawn_exporterd
from .lease_checks import (
    Ledger,
    Seen,
    client_overlaps,
    double_holds,
    fifo_problems,
    held_spans,
    lost_leases,
    queue_problems,
    store_rows,
)

CLIENTS, LIGHT, REAL = 20, 10, 2
OFFLINE_AFTER = 5.0
BASE_OPS, BASE_RESTARTS = 1500, 10
RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
POOL = "pool=chaos"

pytestmark = pytest.mark.timeout(int(300 * fault_scale()) + 60)


@dataclass
class Owned:
    name: str
    duration: float
    granted: bool = False


def ts(message: Any) -> float:
    return message.seconds + message.nanos / 1e9


class Retried(Exception):
    """The call failed with `code` after at least one attempt that may have taken effect."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def over(exc: grpc.RpcError | Retried) -> bool:
    """UpdateLease refused because the lease ended, or reached its end time before the scheduler ended it."""
    code, details = (
        (exc.code(), exc.details() or "") if isinstance(exc, grpc.RpcError) else (exc.code, exc.details)
    )
    return code == grpc.StatusCode.FAILED_PRECONDITION or (
        code == grpc.StatusCode.INVALID_ARGUMENT and "would end in the past" in details
    )


class Worker:
    """One client: a seeded sequence of lease operations, retried through controller restarts."""

    def __init__(self, index: int, peer: Peer, seed: int, ledger: Ledger, ctx: Chaos) -> None:
        self.index = index
        self.peer = peer
        self.rng = random.Random(seed * 1000 + index)
        self.ledger = ledger
        self.ctx = ctx
        self.owned: dict[str, Owned] = {}
        self.inbox: queue.Queue[Owned] = queue.Queue()
        self.counter = 0

    @property
    def name(self) -> str:
        return self.peer.identity.name

    def call(self, fn: Any) -> tuple[Any, bool]:
        """Run `fn` until it gets an answer; (answer, whether an earlier attempt may have acted)."""
        retried = False
        deadline = time.monotonic() + 60
        while True:
            try:
                return fn(), retried
            except grpc.RpcError as exc:
                if exc.code() not in RETRY or time.monotonic() > deadline:
                    if retried:
                        raise Retried(exc.code(), exc.details() or "") from None
                    raise
                retried = True
                with self.ledger.lock:
                    self.ledger.retries += 1
                time.sleep(0.05 + self.rng.random() * 0.2)

    def observe(self, lease: Any, sent: float) -> Any:
        got = time.time()
        granted = (
            bool(lease.exporter) and is_true(lease, "Ready") and not lease.HasField("effective_end_time")
        )
        self.ledger.seen.append(
            Seen(
                short(lease.name),
                self.name,
                short(lease.exporter) if lease.exporter else "",
                granted,
                ts(lease.effective_begin_time) if lease.HasField("effective_begin_time") else None,
                sent,
                got,
            )
        )
        return lease

    def get(self, name: str) -> Any:
        sent = time.time()
        lease, _ = self.call(lambda: self.peer.get_lease(name))
        return self.observe(lease, sent)

    def refresh(self, owned: Owned) -> Any:
        lease = self.get(owned.name)
        if lease.HasField("effective_end_time") or any(
            c.type == "Ready" and c.status == "False" for c in lease.conditions
        ):
            self.owned.pop(owned.name, None)
        elif lease.client != self.peer.identity.resource:
            raise AssertionError(f"{self.name} owns {owned.name} but the controller says {lease.client}")
        else:
            owned.granted = bool(lease.exporter)
            owned.duration = lease.duration.seconds + lease.duration.nanos / 1e9
        return lease

    # -- operations ----------------------------------------------------------------------------

    def create(self, duration: float, pinned: str = "") -> None:
        self.counter += 1
        lease_id = f"{self.name}-{self.counter}"
        sent = time.time()
        selector = "" if pinned else POOL
        try:
            lease, _ = self.call(
                lambda: self.peer.create_lease(selector, duration, exporter_name=pinned, lease_id=lease_id)
            )
            self.observe(lease, sent)
        except Retried as exc:  # an attempt cut short by the kill may have created it
            assert exc.code == grpc.StatusCode.ALREADY_EXISTS, f"create {lease_id}: {exc}"
        self.owned[lease_id] = Owned(lease_id, duration)
        self.refresh(self.owned[lease_id])

    def wait(self, owned: Owned) -> None:
        deadline = time.monotonic() + 1.0
        while owned.name in self.owned and not owned.granted and time.monotonic() < deadline:
            self.refresh(owned)
            time.sleep(0.1)

    def extend(self, owned: Owned) -> None:
        longer = round(owned.duration + self.rng.uniform(1, 4), 3)
        lease = client_pb2.Lease(name=self.peer.lease_name(owned.name), duration=seconds(longer))
        sent = time.time()
        try:
            answer, _ = self.call(lambda: self.peer.update_lease(lease, ["duration"]))
            self.observe(answer, sent)
            owned.duration = longer
        except (grpc.RpcError, Retried) as exc:
            assert over(exc), f"extend {owned.name}: {exc}"
            self.owned.pop(owned.name, None)  # it expired meanwhile

    def release(self, owned: Owned) -> None:
        self.ledger.release_asked.add(owned.name)
        self.owned.pop(owned.name, None)
        try:
            _, retried = self.call(lambda: self.peer.delete_lease(owned.name))
            if not retried:
                self.ledger.released_ok.add(owned.name)
        except (grpc.RpcError, Retried) as exc:
            code = exc.code() if isinstance(exc, grpc.RpcError) else exc.code
            assert code == grpc.StatusCode.FAILED_PRECONDITION, f"release {owned.name}: {exc}"

    def transfer(self, owned: Owned, to: Worker) -> None:
        lease = client_pb2.Lease(name=self.peer.lease_name(owned.name), client=to.peer.identity.resource)
        sent = time.time()
        try:
            answer, _ = self.call(lambda: self.peer.update_lease(lease, ["client"]))
            self.observe(answer, sent)
        except (grpc.RpcError, Retried) as exc:
            if over(exc):
                self.owned.pop(owned.name, None)
                return
            denied = isinstance(exc, Retried) and exc.code == grpc.StatusCode.PERMISSION_DENIED
            assert denied, f"transfer {owned.name}: {exc}"
            now_with = to.get(owned.name)  # an attempt cut short by the kill moved it already
            assert now_with.client == to.peer.identity.resource, f"transfer {owned.name}: {now_with}"
        self.owned.pop(owned.name, None)
        to.inbox.put(owned)

    # -- the loop ------------------------------------------------------------------------------

    def step(self, others: list[Worker]) -> None:
        while not self.inbox.empty():
            received = self.inbox.get_nowait()
            self.owned[received.name] = received
        leases = list(self.owned.values())
        granted = [o for o in leases if o.granted]
        pending = [o for o in leases if not o.granted]
        roll = self.rng.random()
        if not leases or (roll < 0.35 and len(leases) < 3):
            pinned = self.ctx.exporters[self.rng.randrange(len(self.ctx.exporters))] if roll < 0.1 else ""
            self.create(round(self.rng.uniform(1.5, 8), 3), pinned)
            self.ledger.count("create")
        elif pending and roll < 0.55:
            self.wait(self.rng.choice(pending))
            self.ledger.count("wait")
        elif granted and roll < 0.7:
            self.extend(self.rng.choice(granted))
            self.ledger.count("extend")
        elif granted and roll < 0.8:
            self.transfer(self.rng.choice(granted), self.rng.choice(others))
            self.ledger.count("transfer")
        else:
            self.release(self.rng.choice(leases))
            self.ledger.count("release")

    def run(self, others: list[Worker]) -> None:
        try:
            while not self.ctx.stop.is_set():
                self.step(others)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.ledger.failures.append(f"{self.name}: {type(exc).__name__}: {exc}")
            self.ctx.stop.set()

    def finish(self) -> None:
        """Release everything, then queue one long pool lease (and maybe one pinned): a queue to check."""
        while not self.inbox.empty():
            received = self.inbox.get_nowait()
            self.owned[received.name] = received
        for owned in list(self.owned.values()):
            self.release(owned)
        self.create(600)
        if self.index % 2 == 0:
            self.create(600, self.ctx.exporters[self.index % len(self.ctx.exporters)])


@dataclass
class Chaos:
    central: Central
    exporters: list[str]
    rng: random.Random
    stop: threading.Event = field(default_factory=threading.Event)
    restarts: int = 0

    def kill_and_restart(self) -> None:
        controller = self.central.controller
        assert controller is not None and controller.poll() is None, self.central.log("controllerd")[-3000:]
        controller.send_signal(signal.SIGKILL)
        controller.wait()
        self.central.start_controller()
        self.restarts += 1

    def run(self, until: Any) -> None:
        while not until():
            if self.stop.wait(self.rng.uniform(1.0, 5.0)):
                return
            self.kill_and_restart()


def online(peer: Peer, name: str) -> bool:
    try:
        return bool(peer.get_exporter(name).online)
    except grpc.RpcError:
        return False


# -- the test ------------------------------------------------------------------------------------


def test_kill_9_and_restart_controllerd_under_lease_traffic(centrals: Any) -> None:
    seed, scale = fault_seed(), fault_scale()
    target_ops, min_restarts = int(BASE_OPS * scale), max(1, int(BASE_RESTARTS * scale))
    started = time.monotonic()
    central: Central = centrals(prefix="jsfk-", offline_after=OFFLINE_AFTER, dial_ready_wait=2.0)
    ns = "chaos"
    real = [central.create("exporter", ns, f"real{i}", pool="chaos") for i in range(REAL)]
    light_ids = central.create_many("exporter", ns, [f"light{i:02d}" for i in range(LIGHT)], pool="chaos")
    clients: list[Identity] = central.create_many("client", ns, [f"c{i:02d}" for i in range(CLIENTS)])
    for i, identity in enumerate(real):
        spawn_exporterd(central, identity, f"real{i}")
    lights = [LightExporter(central, identity).start() for identity in light_ids]
    names = [e.name for e in real] + [e.name for e in light_ids]
    peers = [central.peer(identity) for identity in clients]
    ledger = Ledger()
    chaos = Chaos(central, names, random.Random(seed))
    try:
        watcher = peers[0]
        wait_until(lambda: all(online(watcher, n) for n in names), 60, "all exporters online", 0.2)
        workers = [Worker(i, peer, seed, ledger, chaos) for i, peer in enumerate(peers)]
        threads = [
            threading.Thread(target=w.run, args=([o for o in workers if o is not w],), daemon=True)
            for w in workers
        ]
        for thread in threads:
            thread.start()
        chaos.run(
            lambda: ledger.failures or (ledger.total() >= target_ops and chaos.restarts >= min_restarts)
        )
        chaos.stop.set()
        for thread in threads:
            thread.join(90)
        assert not ledger.failures, "\n".join(ledger.failures[:10])
        assert not any(thread.is_alive() for thread in threads), "a client is stuck"
        traffic = time.monotonic() - started

        for worker in workers:
            worker.finish()
        chaos.kill_and_restart()  # the queue as it was must come back from the store

        try:
            wait_until(lambda: not queue_problems(store_rows(central), names), 60, "a settled queue", 0.5)
        except AssertionError:
            pass  # the problems are reported below
        rows = store_rows(central)
        report: dict[str, Any] = {
            "seed": seed,
            "ops": dict(ledger.ops),
            "total_ops": ledger.total(),
            "restarts": chaos.restarts,
            "retried_calls": ledger.retries,
            "leases": len(rows),
            "granted_leases": sum(1 for r in rows if r["exporter"] is not None),
            "pending_at_end": sum(1 for r in rows if r["exporter"] is None and not r["ended"]),
            "traffic_seconds": round(traffic, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "exporter_reconnects": sum(light.connects for light in lights),
            "exporterd_registrations": sum(
                central.log(f"exporterd-real{i}").count("registered with the controller") for i in range(REAL)
            ),
            "ended": dict(
                Counter(r["conditions"].get("Ready", {}).get("reason") for r in rows if r["ended"])
            ),
            "client_held_spans": len(held_spans(ledger.seen)),
        }
        print("controller kill -9 run:", json.dumps(report, sort_keys=True))

        assert ledger.total() >= target_ops and chaos.restarts >= min_restarts
        assert double_holds(rows) == []
        assert client_overlaps(ledger.seen) == []
        assert lost_leases(rows, ledger) == []
        assert queue_problems(rows, names) == []
        assert fifo_problems(rows, POOL) == []
        # The audit history, written with each transition, must tell the same story as the store.
        records = call(central.admin_socket, "audit", namespace=ns, limit=10_000)
        assert len(records) < 10_000, "raise the limit: the check must see the whole history"
        active = {(ns, r["name"]) for r in rows if r["exporter"] is not None and not r["ended"]}
        assert audit_problems(records, active=active) == []
        assert {r["name"] for r in records if r["kind"] == "lease"} == {r["name"] for r in rows}
        assert report["pending_at_end"] > 0, "the end phase should leave a queue to check"
        assert report["client_held_spans"] > 0 and report["ended"].get("Expired", 0) > 0, report
        assert report["exporterd_registrations"] > REAL * (1 + chaos.restarts // 2), report
        assert all(light.errors == [] for light in lights), [light.errors for light in lights]
        assert all(light.connects > chaos.restarts // 2 for light in lights)
        for (
            name
        ) in names:  # every exporter, the real exporterd processes too, reconnected after the last kill
            wait_until(partial(online, watcher, name), 30, f"{name} online after the last restart", 0.2)
    finally:
        chaos.stop.set()
        for light in lights:
            light.close()
        for peer in peers:
            peer.close()


def test_an_expiry_and_the_next_grant_in_one_pass_do_not_overlap(centrals: Any) -> None:
    """What the kill -9 run found: an exporter that reports AVAILABLE while leased (exporterd does on
    re-registering after a restart) gets its lease's expiry and the next grant in one scheduler pass;
    the ended lease must not be recorded as held after the next one began."""
    central: Central = centrals(prefix="jsfo-", router=False)
    board = StubExporter(central, central.create("exporter", "pass", "board"), auto=False).start()
    alice = central.peer(central.create("client", "pass", "alice"))
    bob = central.peer(central.create("client", "pass", "bob"))
    try:
        first = alice.create_lease(exporter_name="board", duration=1.5)
        assert is_true(first, "Ready")
        second = bob.create_lease(exporter_name="board", duration=60)  # queued behind it
        assert not second.HasField("exporter")
        got = bob.wait_ready(second.name, timeout=20)
        ended = alice.get_lease(first.name)
        assert ended.HasField("effective_end_time") and condition(ended, "Ready").reason == "Expired"
        gap = ts(got.effective_begin_time) - ts(ended.effective_end_time)
        assert gap >= 0, f"board recorded as held by both leases for {-gap * 1e6:.0f} µs"
    finally:
        board.close()
        alice.close()
        bob.close()


def test_the_checks_see_what_they_look_for() -> None:
    """The invariant checks above are not vacuous: each flags a made-up violation."""

    def row(name: str, seq: int, exporter: str | None, begin: float | None, end: float | None, **kw: Any):
        base = {
            "name": name, "seq": seq, "exporter": exporter, "exporter_name": None, "selector": POOL,
            "effective_begin": begin, "effective_end": end, "ended": int(end is not None), "duration": 10.0,
            "created": 0.0, "conditions": {"Ready": {"status": "False", "reason": "Released"}},
        }  # fmt: skip
        return {**base, **kw}

    overlapping = [row("a", 1, "e1", 1.0, 5.0), row("b", 2, "e1", 4.0, None)]
    assert len(double_holds(overlapping)) == 1
    assert double_holds([row("a", 1, "e1", 1.0, 4.0), row("b", 2, "e1", 4.0, None)]) == []
    seen = [Seen("a", "c1", "e1", True, 1.0, 1.0, 1.1), Seen("a", "c1", "e1", True, 1.0, 3.0, 3.1)]
    seen += [Seen("b", "c2", "e1", True, 2.0, 2.0, 2.1), Seen("b", "c2", "e1", True, 2.0, 4.0, 4.1)]
    assert len(client_overlaps(seen)) == 1
    ledger = Ledger(seen=seen)
    assert any("not in the store" in p for p in lost_leases([row("a", 1, "e1", 1.0, None)], ledger))
    waiting = [row("a", 1, "e1", 1.0, None), row("p", 2, None, None, None), row("q", 3, None, None, None)]
    for pending, position in ((waiting[1], 1), (waiting[2], 1)):
        pending["conditions"] = {"Pending": {"message": f"all busy; queue position {position}"}}
    assert len(queue_problems(waiting, ["e1"])) == 1  # q must be position 2
    skipped = [row("a", 1, None, None, None), row("b", 2, "e1", 5.0, None, created=1.0)]
    assert len(fifo_problems(skipped, POOL)) == 1
