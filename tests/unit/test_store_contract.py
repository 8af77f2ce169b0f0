"""The store contract: what every Store (controllerd/store/base.py) guarantees, run against both
SQLite and Kubernetes (the in-test API server, tests/harness/kube_api.py). The scheduler's own
tests (tests/unit/test_scheduler.py) run against both stores too.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from controllerd import audit
from controllerd.audit import AuditQuery
from controllerd.hub import Hub
from controllerd.records import AccessPolicy, AuditEvent, Client, Exporter, ExporterStatus, Lease, TokenRecord
from controllerd.scheduler import LeaseScheduler
from controllerd.store import Conflict, NotFound, StorageError
from tests.unit.stores import NAMESPACE, STORES, Backing


@pytest.fixture(params=STORES)
def backing(request, tmp_path):
    with Backing(request.param, tmp_path) as backing:
        yield backing


def run(coro):
    return asyncio.run(coro)


def board(name: str, **labels: str) -> Exporter:
    return Exporter(
        NAMESPACE,
        name,
        labels=labels or {"board": "rpi4"},
        status=ExporterStatus.AVAILABLE,
        last_seen=1_700_000_000.25,
        registered=True,
    )


def test_records_read_back_as_written_and_survive_a_restart(backing):
    exporter = board("e1", board="rpi4", site="lab-2")
    exporter.devices = [
        {"uuid": "u1", "parent_uuid": None, "labels": {"driver": "serial"}},
        {"uuid": "u2", "parent_uuid": "u1", "labels": {}},
    ]
    exporter.status_message = "ready"
    exporter.enabled = False
    exporter.health, exporter.health_reason = "maintenance", "replacing the SD card"  # board states
    client = Client(NAMESPACE, "alice", labels={"team": "kernel"})
    lease = Lease(
        NAMESPACE,
        "l1",
        "alice",
        selector="board=rpi4,site in (lab-1,lab-2),!broken",
        duration=1234.5,
        begin_time=1_700_000_100.125,
        tags={"ci": "yes"},
        context={"build_id": "42"},
        allow_disabled=True,
        out_of_service_ok=True,  # an administrator's explicit lease
    )
    policy = AccessPolicy(NAMESPACE, "p1", "board=rpi4", "team=kernel", priority=7, maximum_duration=3600.0)
    token = TokenRecord(
        "5f0c3c7e-1d7b-4a3e-9a4e-2b7f5e0d9c11", client.subject, NAMESPACE, "Client", "alice", 1.5, 99.5
    )

    async def write(store):
        await store.save_exporter(exporter)
        await store.save_client(client)
        created = await store.create_lease(lease)
        created.set_condition("Pending", "True", "NotAvailable", "queue position 1")
        await store.save_lease(created)
        await store.save_policy(policy)
        await store.save_token(token)
        return created

    async def read(store):
        return (
            await store.get_exporter(NAMESPACE, "e1"),
            await store.get_client(NAMESPACE, "alice"),
            await store.get_lease(NAMESPACE, "l1"),
            await store.list_policies(NAMESPACE),
            await store.list_tokens(client.subject),
        )

    first = backing.open()
    created = run(write(first))
    expected = (exporter, client, created, [policy], [token])
    assert run(read(first)) == expected
    first.close()  # a restart: everything comes back from the backing
    assert run(read(backing.open())) == expected


def test_a_missing_record_is_not_found_and_a_lease_name_is_taken_once(backing):
    store = backing.open()

    async def scenario():
        for get in (store.get_exporter, store.get_client, store.get_lease):
            with pytest.raises(NotFound):
                await get(NAMESPACE, "nope")
        with pytest.raises(NotFound):
            await store.delete_exporter(NAMESPACE, "nope")
        await store.create_lease(Lease(NAMESPACE, "l1", "alice", selector="a=b", duration=60))
        with pytest.raises(Conflict):
            await store.create_lease(Lease(NAMESPACE, "l1", "bob", selector="a=b", duration=60))
        assert (await store.get_lease(NAMESPACE, "l1")).client == "alice"

    run(scenario())


def test_requests_are_numbered_in_order_and_ended_leases_leave_the_active_list(backing):
    store = backing.open()

    async def scenario():
        for name in ("c", "a", "b"):
            await store.create_lease(Lease(NAMESPACE, name, "alice", selector="a=b", duration=60))
        active = await store.list_leases(only_active=True)
        assert [le.name for le in active] == ["c", "a", "b"]
        assert [le.seq for le in active] == sorted({le.seq for le in active})
        done = active[1]
        done.ended = True
        await store.save_lease(done)
        assert [le.name for le in await store.list_leases(only_active=True)] == ["c", "b"]
        assert [le.name for le in await store.list_leases()] == ["c", "a", "b"]
        assert await store.count_pending_leases(NAMESPACE, "alice") == 2

    run(scenario())


def test_deleted_records_are_gone_after_a_restart(backing):
    store = backing.open()

    async def scenario(store):
        await store.save_exporter(board("e1"))
        await store.save_client(Client(NAMESPACE, "alice"))
        await store.save_policy(AccessPolicy(NAMESPACE, "p1", "board=rpi4", "", priority=1))
        await store.delete_exporter(NAMESPACE, "e1")
        await store.delete_client(NAMESPACE, "alice")
        await store.delete_policy(NAMESPACE, "p1")

    run(scenario(store))

    async def empty(store):
        return (await store.list_exporters(), await store.list_clients(), await store.list_policies())

    assert run(empty(store)) == ([], [], [])
    assert run(empty(backing.open())) == ([], [], [])


def test_two_writers_racing_grants_never_give_one_exporter_to_two_leases(backing):
    """Two stores on one backing (two controller replicas) each try every lease on every exporter at once."""
    first, second = backing.open(), backing.open()
    exporters = [f"e{i}" for i in range(5)]
    names = [f"l{i:02d}" for i in range(20)]

    async def setup():
        for name in exporters:
            await first.save_exporter(board(name))
        for name in names:
            await first.create_lease(Lease(NAMESPACE, name, "alice", selector="board=rpi4", duration=600))

    run(setup())

    async def grab(store, lease_name, exporter):
        try:
            lease = await store.get_lease(NAMESPACE, lease_name)
            if lease.exporter is not None:
                return
            lease.exporter = exporter
            await store.save_lease(lease)
        except (Conflict, StorageError):  # refused: taken, or the lease changed meanwhile
            pass

    async def race():
        attempts = [
            grab(store, lease_name, exporter)
            for store, lease_name, exporter in itertools.product((first, second), names, exporters)
        ]
        await asyncio.gather(*attempts)

    run(race())
    for store in (first, backing.open()):  # as each replica sees it, and after a restart
        active = [le for le in run(store.list_leases(only_active=True)) if le.exporter is not None]
        held = [le.exporter for le in active]
        assert len(held) == len(set(held)), f"an exporter granted twice: {sorted(held)}"
        assert set(held) == set(exporters)  # and every exporter was granted to someone


def test_a_scheduler_restarted_on_the_same_records_keeps_its_grants_and_queue(backing):
    """A crash (no close) and a new scheduler on a new store: grants kept, no double grant, queue moves on."""
    store = backing.open()
    scheduler = LeaseScheduler(store, Hub(), offline_after=3600)

    async def before():
        for name in ("e1", "e2"):
            exporter = board(name)
            exporter.last_seen = time.time()  # online for the real clock's scheduler
            await store.save_exporter(exporter)
        for name in ("a", "b", "c"):
            await scheduler.submit(Lease(NAMESPACE, name, "alice", selector="board=rpi4", duration=600))

    run(before())
    again = backing.open()  # the first store is not closed: as after a crash
    restarted = LeaseScheduler(again, Hub(), offline_after=3600)

    async def after():
        await restarted.poke()
        leases = {le.name: le for le in await again.list_leases(only_active=True)}
        assert (leases["a"].exporter, leases["b"].exporter, leases["c"].exporter) == ("e1", "e2", None)
        await restarted.release(leases["a"])
        return await again.get_lease(NAMESPACE, "c")

    assert run(after()).exporter == "e1"


def test_audit_ids_keep_growing_across_pruning_and_restarts(backing):
    store = backing.open()

    def event(name: str, when: float) -> AuditEvent:
        return AuditEvent(NAMESPACE, "lease", name, "created", "admin", lease=name, time=when)

    async def scenario():
        await store.append_audit([event("a", 10.0), event("b", 20.0)])
        await store.save_client(Client(NAMESPACE, "alice"), [event("c", 30.0)])
        listed = await store.list_audit(AuditQuery())
        assert [e.name for e in listed] == ["a", "b", "c"]
        assert listed[0].id < listed[1].id < listed[2].id
        assert [e.name for e in await store.list_audit(AuditQuery(lease="b"))] == ["b"]
        assert await store.prune_audit(before=15.0, max_records=1000) == 1
        return listed[-1].id

    newest = run(scenario())
    store.close()
    reopened = backing.open()
    run(reopened.append_audit([event("d", 40.0)]))
    listed = run(reopened.list_audit(AuditQuery(limit=2)))
    assert [e.name for e in listed] == ["c", "d"] and listed[-1].id > newest


def test_token_records_are_listed_by_subject_and_revocations_kept(backing):
    store = backing.open()
    tokens = [
        TokenRecord(
            f"00000000-0000-4000-8000-00000000000{i}",
            f"client:{NAMESPACE}:c{i % 2}:u",
            NAMESPACE,
            "Client",
            f"c{i % 2}",
            float(i),
            1e10,
        )
        for i in range(4)
    ]

    async def scenario():
        await store.save_tokens(tokens)
        tokens[1].revoked = tokens[2].revoked = True
        await store.save_tokens([tokens[1], tokens[2]])
        assert [t.jti for t in await store.list_tokens(f"client:{NAMESPACE}:c1:u")] == [
            tokens[1].jti,
            tokens[3].jti,
        ]
        assert {t.jti for t in await store.revoked_tokens()} == {tokens[1].jti, tokens[2].jti}

    run(scenario())


def test_a_refused_change_stores_no_audit_event_on_either_store(backing):
    """test_audit.py's test of this creates a lease already granted, which only SQLite allows."""
    store = backing.open()

    async def scenario():
        await store.save_exporter(board("e1"))
        held = await store.create_lease(Lease(NAMESPACE, "a", "alice", selector="board=rpi4", duration=60))
        held.exporter = "e1"
        await store.save_lease(held)
        clash = await store.create_lease(Lease(NAMESPACE, "b", "bob", selector="board=rpi4", duration=60))
        clash.exporter = "e1"  # a second active lease on e1: the store refuses it
        with pytest.raises(Conflict):
            await store.save_lease(clash, [audit.lease_granted(clash, 0.0)])
        again = Lease(NAMESPACE, "a", "x", selector="board=rpi4", duration=60)
        with pytest.raises(Conflict):  # and a duplicate name with its "created" record
            await store.create_lease(again, [audit.lease_created(again, "x")])
        return await store.list_audit(AuditQuery())

    assert run(scenario()) == []


# The audit history's store-level tests of tests/unit/test_audit.py (which runs them on SQLite),
# here on the Kubernetes store. Left out there: the ones that break SQLite on purpose (a failing
# audit insert rolls the change back: Kubernetes has no transaction across objects, its audit is
# written after the change), the count of SQLite writes of an idle pass, and the refused change
# (above, on both stores).
from tests.unit.test_audit import (  # noqa: E402
    Clock as AuditClock,
)
from tests.unit.test_audit import (  # noqa: E402
    test_a_lease_life_is_audited_in_order_with_its_actors,  # noqa: F401
    test_pause_resume_and_exporter_liveness_are_audited_with_the_reason,  # noqa: F401
    test_queries_filter_and_return_the_newest_last,  # noqa: F401
)


@pytest.fixture
def env(tmp_path):
    """test_audit.py's fixture, on the Kubernetes store."""
    with Backing("kubernetes", tmp_path) as backing:
        store = backing.open()
        clock = AuditClock()
        yield store, LeaseScheduler(store, Hub(), clock=clock, offline_after=60), clock
