"""The lease scheduler against both real stores: SQLite (in a temp file) and Kubernetes (on the
in-test API server, tests/harness/kube_api.py); part of the store contract suite."""

from __future__ import annotations

import asyncio

import pytest

from controllerd.hub import Hub
from controllerd.records import AccessPolicy, Client, Exporter, ExporterStatus, Lease
from controllerd.scheduler import LeaseRequestError, LeaseScheduler, resolve_times
from controllerd.store import Conflict, open_store
from jumpstarter.selector import parse
from tests.unit.stores import STORES, Backing
from tests.unit.worktrace import count_lines


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=STORES)
def env(request, tmp_path):
    with Backing(request.param, tmp_path) as backing:
        store = backing.open()
        clock = Clock()
        hub = Hub()
        scheduler = LeaseScheduler(store, hub, clock=clock, offline_after=60)
        yield store, scheduler, clock, hub


def run(coro):
    return asyncio.run(coro)


async def add_exporter(
    store, clock, name, labels=None, status=ExporterStatus.AVAILABLE, enabled=True, online=True
):
    exporter = Exporter(
        "lab",
        name,
        labels=labels or {"board": "rpi4"},
        status=status,
        enabled=enabled,
        last_seen=clock.now if online else None,
        registered=True,
    )
    await store.save_exporter(exporter)
    return exporter


async def add_client(store, name, labels=None):
    await store.save_client(Client("lab", name, labels=labels or {}))


def lease(name, client="alice", selector="board=rpi4", duration=600.0, **kw):
    return Lease("lab", name, client, selector=selector, duration=duration, **kw)


def test_first_lease_gets_the_free_exporter_and_the_second_waits_in_queue(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        a = await scheduler.submit(lease("a"))
        b = await scheduler.submit(lease("b", client="bob"))
        assert a.exporter == "e1" and a.condition("Ready").status == "True"
        assert b.exporter is None and b.condition("Pending").reason == "NotAvailable"
        assert "queue position 1" in b.condition("Pending").message
        c = await scheduler.submit(lease("c", client="carol"))
        assert "queue position 2" in c.condition("Pending").message
        await scheduler.release(a)
        # the exporter must report AVAILABLE again (cleanup done) before the next grant
        b = await store.get_lease("lab", "b")
        assert b.exporter == "e1" and b.condition("Ready").status == "True"
        c = await store.get_lease("lab", "c")
        assert c.exporter is None and "queue position 1" in c.condition("Pending").message

    run(scenario())


def test_released_lease_ends_with_ready_false_released(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        a = await scheduler.release(await scheduler.submit(lease("a")))
        assert a.ended and a.released and a.condition("Ready").reason == "Released"
        assert a.condition("Pending") is None

    run(scenario())


def test_lease_expires_at_its_end_time(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        a = await scheduler.submit(lease("a", duration=30))
        assert a.deadline() == clock.now + 30
        clock.now += 31
        await scheduler.poke()
        a = await store.get_lease("lab", "a")
        assert a.ended and a.condition("Ready").status == "False" and a.condition("Ready").reason == "Expired"

    run(scenario())


def test_policy_priority_orders_the_queue_before_request_time(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_client(store, "intern", {"team": "interns"})
        await add_client(store, "ci", {"team": "ci"})
        await store.save_policy(AccessPolicy("lab", "interns", client_selector="team=interns", priority=1))
        await store.save_policy(AccessPolicy("lab", "ci", client_selector="team=ci", priority=10))
        # busy cleaning up: nobody gets it yet
        await add_exporter(store, clock, "e1", status=ExporterStatus.LEASE_READY)
        await scheduler.submit(lease("slow", client="intern"))
        await scheduler.submit(lease("fast", client="ci"))
        exporter = await store.get_exporter("lab", "e1")
        exporter.status = ExporterStatus.AVAILABLE
        await store.save_exporter(exporter)
        await scheduler.poke()
        assert (await store.get_lease("lab", "fast")).exporter == "e1"
        assert (await store.get_lease("lab", "slow")).exporter is None

    run(scenario())


def test_policies_deny_by_default_and_limit_duration(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_client(store, "alice", {"team": "a"})
        await store.save_policy(AccessPolicy("lab", "short", client_selector="team=a", maximum_duration=60))
        await add_exporter(store, clock, "e1")
        long = await scheduler.submit(lease("long", duration=600))
        assert long.ended and long.condition("Unsatisfiable").reason == "NoAccess"
        short = await scheduler.submit(lease("short", duration=60))
        assert short.exporter == "e1"

    run(scenario())


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"selector": "board=nope"}, "ExporterNotFound"),
        ({"selector": "", "exporter_name": "ghost"}, "ExporterNotFound"),
        ({"selector": "board=x", "exporter_name": "e1"}, "SelectorMismatch"),
    ],
)
def test_unsatisfiable_leases_end_at_once(env, kwargs, reason):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        result = await scheduler.submit(lease("x", **kwargs))
        assert result.ended and result.condition("Unsatisfiable").reason == reason

    run(scenario())


def test_disabled_exporters_are_skipped_unless_allowed(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1", enabled=False)
        refused = await scheduler.submit(lease("a"))
        assert refused.condition("Unsatisfiable").reason == "AllDisabled"
        allowed = await scheduler.submit(lease("b", allow_disabled=True))
        assert allowed.exporter == "e1"

    run(scenario())


def test_offline_exporter_keeps_lease_waiting_then_pauses_an_active_lease(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1", online=False)
        a = await scheduler.submit(lease("a", duration=3600))
        assert a.condition("Pending").reason == "Offline"
        exporter = await store.get_exporter("lab", "e1")
        exporter.last_seen = clock.now
        await store.save_exporter(exporter)
        await scheduler.poke()
        a = await store.get_lease("lab", "a")
        assert a.exporter == "e1"
        clock.now += 61  # silence
        await scheduler.poke()
        a = await store.get_lease("lab", "a")
        assert a.paused and a.condition("Paused").reason == "ExporterOffline" and not a.ended
        exporter.last_seen = clock.now
        await store.save_exporter(exporter)
        await scheduler.poke()
        a = await store.get_lease("lab", "a")
        assert not a.paused and a.condition("Paused") is None and a.exporter == "e1"

    run(scenario())


def test_graceful_offline_status_means_offline(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1", status=ExporterStatus.OFFLINE)
        assert (await scheduler.submit(lease("a"))).condition("Pending").reason == "Offline"

    run(scenario())


def test_scheduled_lease_waits_for_its_begin_time(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        a = await scheduler.submit(lease("a", duration=60, begin_time=clock.now + 100))
        assert a.exporter is None and a.condition("Pending").reason == "Scheduled"
        clock.now += 101
        await add_exporter(store, clock, "e1")  # still heartbeating
        await scheduler.poke()
        a = await store.get_lease("lab", "a")
        assert a.exporter == "e1" and a.deadline() == a.begin_time + 60

    run(scenario())


def test_many_concurrent_requests_never_share_an_exporter(env):
    store, scheduler, clock, _ = env

    async def scenario():
        for i in range(5):
            await add_exporter(store, clock, f"e{i}")
        results = await asyncio.gather(*(scheduler.submit(lease(f"l{i}", client=f"c{i}")) for i in range(40)))
        granted = [r.exporter for r in results if r.exporter]
        assert len(granted) == 5 and len(set(granted)) == 5
        active = [le for le in await store.list_leases(only_active=True) if le.exporter]
        assert sorted(le.exporter for le in active) == [f"e{i}" for i in range(5)]

    run(scenario())


def test_queue_positions_count_only_earlier_leases_competing_for_the_same_exporters(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "ea", {"board": "a"})
        await add_exporter(store, clock, "eb", {"board": "b"})
        await scheduler.submit(lease("hold-a", client="h", selector="board=a"))
        await scheduler.submit(lease("hold-b", client="h", selector="board=b"))
        asked = {"l1": "board=a", "l2": "board=b", "l3": "board in (a,b)", "l4": "board=a", "l5": "board"}
        for name, selector in asked.items():
            await scheduler.submit(lease(name, client=f"c-{name}", selector=selector))
        positions = {}
        for name in asked:
            message = (await store.get_lease("lab", name)).condition("Pending").message
            positions[name] = int(message.rsplit(" ", 1)[1])
        assert positions == {"l1": 1, "l2": 1, "l3": 3, "l4": 3, "l5": 5}

    run(scenario())


def test_label_index_selects_exactly_the_items_a_selector_matches():
    from jumpstarter.selector import LabelIndex

    items = {f"x{i}": {"board": f"b{i % 3}", "pool": "p" if i % 2 else "q"} for i in range(12)}
    items["bare"] = {}
    items["empty"] = {"board": ""}
    index: LabelIndex[str] = LabelIndex()
    for name, labels in items.items():
        index.add(name, labels)
    for text in [
        "",
        "board=b1",
        "board!=b1",
        "board in (b0,b2),pool=p",
        "board notin (b0)",
        "pool",
        "!pool",
        "board=b1,!pool",
        "board=",
        "board=b9",
        "pool=p,board,board!=b2",
    ]:
        expected = {name for name, labels in items.items() if parse(text).matches(labels)}
        assert index.select(parse(text)) == expected, text


async def _queue(store, scheduler, clock, pending):
    """20 exporters, each held by an active lease; `pending` leases over 4 selectors wait behind them."""
    await store.save_policy(AccessPolicy("lab", "all", priority=0))
    await store.save_policy(AccessPolicy("lab", "team-a", "board=rpi4", "team=a", priority=5))
    await store.save_client(Client("lab", "holder"))
    for i in range(20):
        await add_exporter(store, clock, f"e{i:02d}", {"board": "rpi4" if i % 2 else "imx8", "pool": "all"})
        await scheduler.submit(lease(f"hold{i:02d}", client="holder", exporter_name=f"e{i:02d}", selector=""))
    for i in range(10):
        await store.save_client(Client("lab", f"c{i}", labels={"team": "a" if i % 2 else "b"}))
    shapes = ["board=rpi4", "board=imx8", "pool=all", "board in (rpi4,imx8),!broken"]
    for i in range(pending):
        queued = lease(f"p{i:04d}", client=f"c{i % 10}", selector=shapes[i % 4])
        queued.created = clock.now
        await store.create_lease(queued)  # straight into the store: no pass per lease while filling
    await scheduler.poke()  # writes every Pending condition once; what follows is the steady state


def test_a_pass_does_work_linear_in_the_number_of_pending_leases(tmp_path):
    # Lines executed in controllerd/ and the selector per pass: a count of work, not a timing.
    work, stats = {}, {}
    for pending in (100, 200, 400):
        store = open_store(f"sqlite://{tmp_path}/c{pending}.db")
        clock = Clock()
        scheduler = LeaseScheduler(store, Hub(), clock=clock, offline_after=60)
        try:
            run(_queue(store, scheduler, clock, pending))
            work[pending] = run(count_lines(scheduler.poke))
            stats[pending] = dict(scheduler.stats)
        finally:
            store.close()
    first, second = work[200] - work[100], work[400] - work[200]
    assert first > 0 and second <= 2.5 * first, f"lines per pass {work}: not linear"  # quadratic: 4x
    for pending, seen in stats.items():  # each distinct request evaluated once, however long the queue
        assert seen["pending"] == pending and seen["evaluated"] == 4, seen


def test_quota_counts_a_clients_pending_leases_and_transfers_to_it(env):
    from controllerd.scheduler import QuotaExceeded

    store, _, clock, hub = env
    scheduler = LeaseScheduler(store, hub, clock=clock, offline_after=60, max_pending=2)

    async def scenario():
        await add_exporter(store, clock, "e1")
        assert (await scheduler.submit(lease("a0"))).exporter == "e1"  # granted: not pending
        await scheduler.submit(lease("a1"))
        await scheduler.submit(lease("a2"))
        with pytest.raises(QuotaExceeded, match="alice already has 2 pending leases, the limit is 2"):
            await scheduler.submit(lease("a3"))
        with pytest.raises(Exception, match="not found"):
            await store.get_lease("lab", "a3")
        await scheduler.submit(lease("b1", client="bob"))

        def move(moved: Lease) -> None:
            moved.client = "alice"

        with pytest.raises(QuotaExceeded, match="alice already has 2"):
            await scheduler.update("lab", "b1", move)
        assert (await store.get_lease("lab", "b1")).client == "bob"
        await scheduler.release(await store.get_lease("lab", "a1"))
        await scheduler.submit(lease("a3"))

    run(scenario())


def test_store_refuses_a_second_active_lease_on_one_exporter(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        a = await scheduler.submit(lease("a"))
        b = await store.create_lease(lease("b"))
        b.exporter = a.exporter
        with pytest.raises(Conflict):
            await store.save_lease(b)

    run(scenario())


@pytest.mark.parametrize(
    "args, error",
    [
        ((None, None, None), "duration is required"),
        ((None, None, 5.0), "duration is required"),
        ((10.0, 0.0, 5.0), "duration conflicts"),
        ((-1.0, None, None), "must be positive"),
        ((None, 10.0, 5.0), "end_time must be after begin_time"),
    ],
)
def test_time_field_rules(args, error):
    with pytest.raises(LeaseRequestError, match=error):
        resolve_times(*args)


def test_time_fields_are_completed():
    assert resolve_times(None, 100.0, 160.0) == (60.0, 100.0, 160.0)
    assert resolve_times(60.0, None, None) == (60.0, None, None)


def test_schema_is_versioned_and_reopening_keeps_data(tmp_path):
    from controllerd.store.sqlite import MIGRATIONS, SqliteStore

    store = SqliteStore(str(tmp_path / "c.db"))
    assert store.schema_version == len(MIGRATIONS)
    asyncio.run(store.save_client(Client("lab", "alice")))
    store.close()
    again = SqliteStore(str(tmp_path / "c.db"))
    assert [c.name for c in asyncio.run(again.list_clients())] == ["alice"]
    again.close()


def test_store_lease_cache_hands_out_copies_and_follows_every_write(tmp_path):
    store = open_store(f"sqlite://{tmp_path}/c.db")

    async def scenario():
        await store.create_lease(lease("a", tags={"t": "1"}))
        await store.create_lease(lease("b"))
        got = (await store.list_leases(only_active=True))[0]
        got.tags["t"] = "changed"
        got.set_condition("Pending", "True", "Mine", "not saved")
        again = (await store.list_leases(only_active=True))[0]
        assert again.tags == {"t": "1"} and again.conditions == []
        again.exporter = "e1"
        await store.save_lease(again)
        clash = await store.get_lease("lab", "b")
        clash.exporter = "e1"
        with pytest.raises(Conflict):
            await store.save_lease(clash)
        again.ended = True
        await store.save_lease(again)
        return [(le.name, le.exporter) for le in await store.list_leases("lab", only_active=True)]

    assert run(scenario()) == [("b", None)]
    store.close()
    reopened = open_store(f"sqlite://{tmp_path}/c.db")
    assert [(le.name, le.exporter) for le in run(reopened.list_leases(only_active=True))] == [("b", None)]
    reopened.close()


def test_an_update_applies_to_the_current_record_and_keeps_a_grant_made_meanwhile(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        holder = await scheduler.submit(lease("holder"))
        waiting = await scheduler.submit(lease("waiting"))
        assert waiting.exporter is None
        await scheduler.release(holder)  # `waiting` is granted e1 now
        seen: list[str | None] = []

        def extend(current: Lease) -> None:
            seen.append(current.exporter)
            current.duration = 7200.0

        updated = await scheduler.update("lab", "waiting", extend)
        assert seen == ["e1"]
        assert updated.exporter == "e1" and updated.duration == 7200.0
        stored = await store.get_lease("lab", "waiting")
        assert stored.exporter == "e1" and stored.duration == 7200.0

    run(scenario())


def test_requests_that_arrive_together_share_one_pass(env):
    """Each submit/release/update used to run its own full pass: a burst of N requests cost N
    passes over every exporter and lease, which saturated controllerd (tests/bench/bench_load.py)."""
    store, scheduler, clock, _ = env
    burst = 30

    async def scenario():
        for i in range(burst):
            await add_exporter(store, clock, f"e{i:02d}")
        await add_client(store, "alice")
        scheduler.max_pending = burst
        before = scheduler.stats["passes"]
        leases = await asyncio.gather(
            *(
                scheduler.submit(Lease("lab", f"l{i:02d}", "alice", selector="board=rpi4", duration=60))
                for i in range(burst)
            )
        )
        created = scheduler.stats["passes"] - before
        assert all(lease.exporter is not None for lease in leases)  # each saw its grant on return
        assert len({lease.exporter for lease in leases}) == burst
        before = scheduler.stats["passes"]
        await asyncio.gather(*(scheduler.release(lease) for lease in leases))
        released = scheduler.stats["passes"] - before
        assert all([(await store.get_lease("lab", lease.name)).ended for lease in leases])
        return created, released

    created, released = run(scenario())
    assert created < burst / 2 and released < burst / 2, (created, released)


def test_a_quota_refusal_keeps_the_pass_its_count_ran(env):
    """The quota check plans unplanned requests first; refusing used to roll that pass back after its
    grant was announced, and left it marked planned, so bob's lease waited for an unrelated change."""
    from controllerd.scheduler import QuotaExceeded

    store, _, clock, hub = env
    granted: list[str] = []
    scheduler = LeaseScheduler(
        store,
        hub,
        clock=clock,
        offline_after=60,
        max_pending=1,
        on_event=lambda kind, le: granted.append(le.name) if kind == "granted" else None,
    )

    async def scenario():
        await add_exporter(store, clock, "e1", labels={"board": "x"})
        await add_exporter(store, clock, "e2", labels={"board": "y"})
        await scheduler.submit(lease("a1", selector="board=x"))  # holds e1
        assert (await scheduler.submit(lease("a2", selector="board=x"))).exporter is None  # alice: 1 pending
        results = await asyncio.gather(
            scheduler.submit(lease("b1", client="bob", selector="board=y")),
            scheduler.submit(lease("a3", selector="board=x")),
            return_exceptions=True,
        )
        assert isinstance(results[1], QuotaExceeded)
        assert "b1" in granted
        assert (await store.get_lease("lab", "b1")).exporter == "e2"  # what was announced is stored

    run(scenario())


def test_update_returns_the_lease_as_its_pass_left_it(env):
    store, scheduler, clock, _ = env

    async def scenario():
        await add_exporter(store, clock, "e1")
        later = await scheduler.submit(lease("later", begin_time=clock.now + 3600))
        assert later.condition("Pending").reason == "Scheduled"

        def now_please(current: Lease) -> None:
            current.begin_time = None

        updated = await scheduler.update("lab", "later", now_please)
        assert updated.exporter == "e1" and updated.condition("Ready").status == "True"

    run(scenario())


def test_an_update_approved_by_policy_is_not_then_ended_by_the_pass(env):
    """UpdateLease and the pass judged a lease by different holds (held_for vs duration)."""
    store, scheduler, clock, _ = env

    async def scenario():
        await add_client(store, "alice", {"team": "a"})
        await store.save_policy(AccessPolicy("lab", "p", client_selector="team=a", maximum_duration=600))
        await add_exporter(store, clock, "e1")
        await scheduler.submit(lease("holder", duration=300))
        assert (await scheduler.submit(lease("waiting", duration=300))).exporter is None

        def until(current: Lease) -> None:  # holds 500s from now, though its duration says 1000
            current.duration, current.end_time = 1000.0, clock.now + 500

        await scheduler.update("lab", "waiting", until)
        stored = await store.get_lease("lab", "waiting")
        assert not stored.ended and stored.pending, stored.conditions

        def too_long(current: Lease) -> None:
            current.duration, current.end_time = 1000.0, clock.now + 900

        from controllerd.policy import PolicyDenied

        with pytest.raises(PolicyDenied):
            await scheduler.update("lab", "waiting", too_long)

    run(scenario())


def test_a_burst_from_one_client_is_counted_after_planning(env):
    """max_pending=1 and six free exporters: six submits at once are all granted, none refused."""
    store, _, clock, hub = env
    scheduler = LeaseScheduler(store, hub, clock=clock, offline_after=60, max_pending=1)

    async def scenario():
        for i in range(6):
            await add_exporter(store, clock, f"e{i}")
        return await asyncio.gather(*(scheduler.submit(lease(f"l{i}")) for i in range(6)))

    leases = run(scenario())
    assert sorted(le.exporter for le in leases) == [f"e{i}" for i in range(6)]
