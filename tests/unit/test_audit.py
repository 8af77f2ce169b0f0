"""The audit history in the real SQLite store and scheduler: atomic with each change, bounded, queryable.

Through the real daemons: tests/integration/test_audit.py.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from controllerd import audit
from controllerd.audit import AuditQuery, query_from_args
from controllerd.hub import Hub
from controllerd.records import AuditEvent, Client, Exporter, ExporterStatus, Lease
from controllerd.scheduler import LeaseScheduler
from controllerd.store import Conflict
from controllerd.store.sqlite import MIGRATIONS, SqliteStore
from tests.integration.audit_checks import audit_problems


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path):
    store = SqliteStore(str(tmp_path / "c.db"))
    clock = Clock()
    scheduler = LeaseScheduler(store, Hub(), clock=clock, offline_after=60)
    yield store, scheduler, clock
    store.close()


def run(coro):
    return asyncio.run(coro)


async def board(store, clock, name, **labels):
    exporter = Exporter(
        "lab",
        name,
        labels=labels or {"board": "rpi4"},
        status=ExporterStatus.AVAILABLE,
        last_seen=clock.now,
        registered=True,
    )
    await store.save_exporter(exporter)
    return exporter


def events(store, **query):
    return run(store.list_audit(AuditQuery(**query)))


def actions(store, **query):
    return [(e.name, e.action, e.actor) for e in events(store, **query)]


def fail_audit_inserts(store: SqliteStore) -> None:
    """What a full disk or I/O error does to the audit insert: the statement fails."""
    store.db.execute(
        "CREATE TEMP TRIGGER audit_fails BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )


def test_a_lease_life_is_audited_in_order_with_its_actors(env):
    store, scheduler, clock = env

    async def scenario():
        await board(store, clock, "e1")
        await store.save_client(Client("lab", "alice"))
        await store.save_client(Client("lab", "bob"))
        first = await scheduler.submit(Lease("lab", "first", "alice", selector="board=rpi4", duration=60))
        await scheduler.submit(Lease("lab", "second", "bob", selector="board=rpi4", duration=60))
        await scheduler.update("lab", "first", lambda le: setattr(le, "duration", 120), "client:alice")
        await scheduler.update("lab", "first", lambda le: setattr(le, "client", "bob"), "client:alice")
        await scheduler.release(first, actor="client:bob")

    run(scenario())
    assert actions(store) == [
        ("first", "created", "client:alice"),
        ("first", "granted", "scheduler"),
        ("second", "created", "client:bob"),
        ("second", "queued", "scheduler"),
        ("first", "extended", "client:alice"),
        ("first", "transferred", "client:alice"),
        ("first", "released", "client:bob"),
        ("second", "granted", "scheduler"),
    ]
    ids = [e.id for e in events(store)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    extended = events(store, lease="first")[2]
    assert extended.detail["new_end"] - extended.detail["old_end"] == pytest.approx(60)
    assert events(store, lease="first")[3].message == "client alice → bob"
    assert audit_problems([e.__dict__ for e in events(store)], active={("lab", "second")}) == []


def test_a_failing_audit_write_leaves_the_lease_as_it_was(env):
    store, scheduler, clock = env
    run(board(store, clock, "e1"))
    run(scheduler.submit(Lease("lab", "a", "alice", selector="board=rpi4", duration=60)))
    before = len(events(store))
    fail_audit_inserts(store)
    with pytest.raises(sqlite3.IntegrityError):
        run(scheduler.release(run(store.get_lease("lab", "a")), actor="client:alice"))
    assert not run(store.get_lease("lab", "a")).ended  # neither the change...
    assert [le.name for le in run(store.list_leases(only_active=True))] == ["a"]  # (nor the cache)
    assert len(events(store)) == before  # ...nor its record
    store.db.execute("DROP TRIGGER audit_fails")
    run(scheduler.release(run(store.get_lease("lab", "a")), actor="client:alice"))
    assert run(store.get_lease("lab", "a")).ended and events(store)[-1].action == "released"


def test_a_failing_audit_write_creates_no_lease_and_no_exporter(env):
    store, scheduler, clock = env
    fail_audit_inserts(store)
    with pytest.raises(sqlite3.IntegrityError):
        run(scheduler.submit(Lease("lab", "a", "alice", selector="board=rpi4", duration=60)))
    event = audit.event("lab", "exporter", "e1", "created", "admin")
    with pytest.raises(sqlite3.IntegrityError):
        run(store.save_exporter(Exporter("lab", "e1"), [event]))
    assert run(store.list_leases()) == [] and run(store.list_exporters()) == []
    assert store.db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0


def test_a_refused_change_stores_no_audit_event(env):
    store, _, _ = env

    async def scenario():
        await store.create_lease(Lease("lab", "a", "alice", exporter="e1"))
        clash = Lease("lab", "b", "bob")
        await store.create_lease(clash)
        clash.exporter = "e1"  # a second active lease on e1: the store refuses it
        with pytest.raises(Conflict):
            await store.save_lease(clash, [audit.lease_granted(clash, 0.0)])
        with pytest.raises(Conflict):  # and a duplicate name with its "created" record
            await store.create_lease(
                Lease("lab", "a", "x"), [audit.lease_created(Lease("lab", "a", "x"), "x")]
            )

    run(scenario())
    assert events(store) == []


def test_records_survive_a_reopen_and_ids_keep_growing_after_pruning(tmp_path):
    path = str(tmp_path / "c.db")
    store = SqliteStore(path)
    for i in range(5):
        event = audit.event("lab", "client", f"c{i}", "created", "admin")
        event.time = 1000.0 + i
        run(store.save_client(Client("lab", f"c{i}"), [event]))
    assert run(store.prune_audit(before=1002.0, max_records=100)) == 2  # by age
    assert run(store.prune_audit(before=0.0, max_records=2)) == 1  # by count: the oldest go
    store.close()
    store = SqliteStore(path)
    assert [e.name for e in events(store)] == ["c3", "c4"]
    run(store.append_audit([audit.event("lab", "client", "c5", "deleted", "admin")]))
    assert [e.id for e in events(store)] == [4, 5, 6]  # never reused
    store.close()


def test_queries_filter_and_return_the_newest_last(env):
    store, scheduler, clock = env

    async def scenario():
        await board(store, clock, "e1", board="x")
        await board(store, clock, "e2", board="y")
        for name, selector in (("a", "board=x"), ("b", "board=y"), ("c", "board=x")):
            await scheduler.submit(Lease("lab", name, f"user-{name}", selector=selector, duration=60))

    run(scenario())
    assert [(e.name, e.action) for e in events(store, exporter="e1")] == [("a", "granted")]
    assert {e.name for e in events(store, client="user-c")} == {"c"}
    assert [e.action for e in events(store, lease="c")] == ["created", "queued"]
    assert [e.action for e in events(store, limit=2)] == ["created", "queued"]  # the newest two
    assert events(store, namespace="other") == []
    later = events(store)[-1].time + 1
    assert events(store, since=later) == []


def test_admin_query_arguments_are_validated():
    assert query_from_args({"lease": "namespaces/lab/leases/x1", "limit": 5}).lease == "x1"
    for bad in ({"limit": 0}, {"limit": 10**6}, {"limit": "5"}, {"since": "yesterday"}, {"lease": "x" * 300}):
        with pytest.raises(ValueError):
            query_from_args(bad)


def test_untrusted_text_is_bounded_and_printable():
    lease = Lease("lab", "a", "alice")
    event = audit.lease_event(lease, "paused", "scheduler", "R\x1b[2J", "m" * 5000 + "\n")
    assert len(event.message) <= audit.MAX_TEXT and event.reason == "R [2J"
    assert "\n" not in audit.bounded("a\nb")


def test_a_pass_that_changes_nothing_writes_nothing(env):
    store, scheduler, clock = env

    async def scenario():
        await board(store, clock, "e1")
        await scheduler.submit(Lease("lab", "held", "alice", selector="board=rpi4", duration=600))
        for i in range(20):
            await scheduler.submit(Lease("lab", f"p{i}", f"c{i}", selector="board=rpi4", duration=600))
        await scheduler.poke()
        changes = store.db.total_changes
        await scheduler.poke()
        await scheduler.poke()
        return store.db.total_changes - changes

    assert run(scenario()) == 0
    assert sum(1 for e in events(store) if e.action == "queued") == 20  # once each, not per pass


def test_pause_resume_and_exporter_liveness_are_audited_with_the_reason(env):
    store, scheduler, clock = env

    async def scenario():
        await board(store, clock, "e1")
        await scheduler.submit(Lease("lab", "a", "alice", selector="board=rpi4", duration=6000))
        clock.now += 61  # silent for longer than offline_after
        await scheduler.poke()
        exporter = await store.get_exporter("lab", "e1")
        exporter.last_seen = clock.now
        await store.save_exporter(exporter)
        await scheduler.poke()

    run(scenario())
    got = [(e.kind, e.action, e.reason) for e in events(store) if e.action not in ("created", "granted")]
    assert got == [
        ("exporter", "offline", "ExporterOffline"),
        ("lease", "paused", "ExporterOffline"),
        ("exporter", "online", "ExporterOnline"),
        ("lease", "resumed", "ExporterOnline"),
    ]
    assert "60s" in events(store, lease="a")[2].message


def test_an_old_database_gains_the_audit_table_and_keeps_its_data(tmp_path):
    path = str(tmp_path / "c.db")
    db = sqlite3.connect(path, isolation_level=None)
    for index, migration in enumerate(MIGRATIONS[:2]):
        db.executescript(f"BEGIN; {migration} PRAGMA user_version = {index + 1}; COMMIT;")
    db.close()
    store = SqliteStore(path)
    assert store.schema_version == len(MIGRATIONS)
    run(store.append_audit([AuditEvent("lab", "client", "c", "created", "admin")]))
    assert [e.name for e in events(store)] == ["c"]
    store.close()


def _record(rid, name, action, exporter=None, **detail):
    return {
        "id": rid,
        "namespace": "lab",
        "kind": "lease",
        "name": name,
        "action": action,
        "exporter": exporter,
        "time": float(rid),
        "detail": detail,
    }


def test_the_invariant_checker_finds_double_holds_lost_grants_and_queue_jumps():
    good = [
        _record(1, "a", "created", selector="s"),
        _record(2, "a", "granted", "e1", priority=0),
        _record(3, "b", "created", selector="s"),
        _record(4, "a", "released", "e1"),
        _record(5, "b", "granted", "e1", priority=0),
    ]
    assert audit_problems(good, active={("lab", "b")}) == []
    double = [*good[:3], _record(4, "b", "granted", "e1", priority=0), _record(5, "a", "released", "e1")]
    assert any("held by two leases" in p for p in audit_problems(double))
    assert any("no end record" in p for p in audit_problems(good, active=set()))
    jumped = [
        _record(1, "a", "created", selector="s"),
        _record(2, "b", "created", selector="s"),
        _record(3, "b", "granted", "e1", priority=0),
    ]
    assert any("ahead of it" in p for p in audit_problems(jumped))
    priority = [
        *jumped[:2],
        _record(3, "a", "queued", priority=0),
        _record(4, "b", "granted", "e1", priority=5),
    ]
    assert audit_problems(priority) == []  # a higher priority may go first


def test_retention_settings_have_defaults_are_documented_and_checked(tmp_path):
    from pathlib import Path

    from controllerd.config import load
    from jumpstarter.errors import ConfigError

    path = tmp_path / "controllerd.yaml"
    path.write_text("listen: 127.0.0.1:8082\n")
    assert (load(str(path)).audit_retention_days, load(str(path)).audit_max_records) == (90.0, 1_000_000)
    shipped = Path(__file__).resolve().parents[2] / "etc" / "controllerd.yaml"
    assert "audit_retention_days: 90" in shipped.read_text()
    for text, problem in (
        ("audit_retention_days: 0\n", ":1: audit_retention_days: expected a positive number"),
        ("audit_max_records: 1.5\n", ":1: audit_max_records: expected a positive whole number"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            load(str(path))
        assert f"{path}{problem}" in str(error.value)


def test_since_takes_an_iso_time_or_a_duration_back_from_now():
    from jumpstarter.cli.admin import since_seconds
    from jumpstarter.errors import ConfigError

    assert since_seconds("1970-01-02T00:00:00Z") == 86400.0
    assert since_seconds("1970-01-02T00:00:00") == 86400.0  # UTC unless it says otherwise
    assert since_seconds("1970-01-02T01:00:00+01:00") == 86400.0
    assert since_seconds("10m", now=1000.0) == 400.0
    with pytest.raises(ConfigError, match="ISO time or a duration"):
        since_seconds("yesterday")
