"""Board states (issue 12): the health check's config, the schema migration, the scheduler's exclusion."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from controllerd import health_checks
from controllerd.board_states import check_reason, out_of_service_text
from controllerd.candidates import Candidates
from controllerd.config import HealthSettings, load_controller_config
from controllerd.dashboard.routers import RouterProbe
from controllerd.dashboard.snapshot import Snapshots
from controllerd.errors import Conflict, InvalidArgument
from controllerd.health_checks import HEALTH_CLIENT, CheckOutcome, HealthChecker
from controllerd.records import AccessPolicy, Client, Exporter, Lease
from controllerd.store.sqlite import MIGRATIONS, SqliteStore
from exporterd.health import HealthCheck, with_health_check
from jumpstarter.config.exporter import load_exporter_config
from jumpstarter.errors import ConfigError


def test_an_exporter_config_declares_a_health_check_served_as_a_health_driver(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("export: {power: {type: power.mock}}\nhealth: {command: 'j power on', timeout: 30}\n")
    config = load_exporter_config(str(path))
    assert config.health is not None and (config.health.script, config.health.timeout) == ("j power on", 30)
    root = with_health_check(config.build(), config.health, "/run/board.sock")
    assert isinstance(root.children["health"], HealthCheck)
    assert "health" not in with_health_check(config.build(), None, "/run/board.sock").children


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("health: {timeout: 5}\n", ":2: health: missing 'command'"),
        ("health: {command: x, timeout: -1}\n", ":2: health.timeout: expected a positive number"),
        ("health: {command: x, every: 3}\n", ":2: health.every: unknown key"),
    ],
)
def test_health_check_mistakes_are_reported_with_file_line_and_key(tmp_path, text, message):
    path = tmp_path / "e.yaml"
    path.write_text("export: {}\n" + text)
    with pytest.raises(ConfigError) as info:
        load_exporter_config(str(path))
    assert f"{path}{message}" in str(info.value), str(info.value)


def test_controller_health_check_settings_load_and_zero_turns_a_trigger_off(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        textwrap.dedent("health_checks: {interval: 600, every_leases: 0, after_offline: false}\n")
    )
    settings = load_controller_config(str(path)).health_checks
    assert (settings.interval, settings.every_leases, settings.after_offline) == (600, 0, False)
    path.write_text("health_checks: {interval: -5}\n")
    with pytest.raises(ConfigError, match="health_checks.interval"):
        load_controller_config(str(path))


def test_an_older_database_gains_board_states_and_keeps_its_rows(tmp_path):
    path = str(tmp_path / "c.db")
    db = sqlite3.connect(path, isolation_level=None)
    for index, migration in enumerate(MIGRATIONS[:3]):
        db.executescript(f"BEGIN; {migration} PRAGMA user_version = {index + 1}; COMMIT;")
    db.execute(
        "INSERT INTO exporters VALUES ('lab', 'rig', 'u1', '{}', 1, 0, '', NULL, 0, '[]', 1.0)"
    )  # a v3 row
    db.close()
    store = SqliteStore(path)
    assert store.schema_version == len(MIGRATIONS)
    exporter = asyncio.run(store.get_exporter("lab", "rig"))
    assert (exporter.uid, exporter.health, exporter.health_reason) == ("u1", "unknown", "")
    exporter.health, exporter.health_reason = "maintenance", "new SD card"
    asyncio.run(store.save_exporter(exporter))
    store.close()
    reopened = SqliteStore(path)
    assert asyncio.run(reopened.get_exporter("lab", "rig")).health_reason == "new SD card"
    reopened.close()


def test_the_store_refuses_a_state_that_does_not_exist(tmp_path):
    store = SqliteStore(str(tmp_path / "c.db"))
    with pytest.raises(Conflict, match="CHECK constraint failed: health IN"):
        asyncio.run(store.save_exporter(Exporter("lab", "rig", health="broken")))
    store.close()


def test_out_of_service_boards_are_candidates_only_for_an_explicit_admin_lease():
    boards = {
        ("lab", "a"): Exporter("lab", "a", labels={"b": "x"}, health="maintenance", health_reason="SD card"),
        ("lab", "b"): Exporter("lab", "b", labels={"b": "x"}, health="unhealthy"),
        ("lab", "c"): Exporter("lab", "c", labels={"b": "x"}, health="healthy"),
    }
    candidates = Candidates(boards, [], 0.0)
    ordinary = candidates.evaluate(Lease("lab", "l1", "alice", selector="b=x"), None)
    assert [e.name for _, e in ordinary.candidates] == ["c"]
    assert [e.name for e in ordinary.out_of_service] == ["a", "b"]
    explicit = Lease("lab", "l2", "ops", exporter_name="a", out_of_service_ok=True)
    assert [e.name for _, e in candidates.evaluate(explicit, None).candidates] == ["a"]
    assert out_of_service_text(ordinary.out_of_service) == (
        "all 2 matching exporters are out of service: a in maintenance (SD card); b unhealthy"
    )


@pytest.mark.parametrize(
    ("reason", "problem"),
    [("", "needs --reason"), ("x" * 201, "too long"), ("a\tb", "printable"), (None, "needs --reason")],
)
def test_a_maintenance_reason_is_refused_not_trimmed(reason, problem):
    with pytest.raises(InvalidArgument, match=problem):
        check_reason(reason)
    assert check_reason("  new SD card ") == "new SD card"


@pytest.mark.parametrize(
    ("notify", "problem"),
    [
        ("{url: 'http://hooks.lab/x'}", "url: an https:// URL"),
        ("{command: [sh, 3]}", "command: a program and its arguments"),
        ("[x]", "expected a mapping with url, command and timeout"),
        ("{urll: 'https://hooks.lab/x'}", "urll: unknown setting (accepted: url, command, timeout)"),
        ("{command: [notify-send], timeout: -1}", "timeout: seconds, more than 0 and at most 300"),
        ("{command: [notify-send], timeout: '5'}", "timeout: seconds, more than 0 and at most 300"),
    ],
)
def test_a_bad_notification_hook_is_a_config_error(tmp_path, notify, problem):
    path = tmp_path / "c.yaml"
    path.write_text(f"health_checks: {{notify: {notify}}}\n")
    with pytest.raises(ConfigError, match="health_checks.notify") as info:
        load_controller_config(str(path))
    assert problem in str(info.value)


def test_a_lease_queues_at_the_priority_of_the_boards_it_can_get_not_of_one_out_of_service():
    boards = {
        ("lab", "fast"): Exporter("lab", "fast", labels={"b": "x", "kind": "fast"}, health="maintenance"),
        ("lab", "slow"): Exporter("lab", "slow", labels={"b": "x"}, health="healthy"),
    }
    policies = [
        AccessPolicy("lab", "fast", exporter_selector="kind=fast", priority=10),
        AccessPolicy("lab", "all", exporter_selector="b=x", priority=1),
    ]
    candidates = Candidates(boards, policies, 0.0)
    evaluation = candidates.evaluate(Lease("lab", "l1", "alice", selector="b=x"), Client("lab", "alice"))
    assert [(p, e.name) for p, e in evaluation.candidates] == [(1, "slow")]
    assert evaluation.priority == 1  # not 10: it cannot get `fast` while that board is in maintenance
    only = candidates.evaluate(Lease("lab", "l2", "alice", selector="kind=fast"), Client("lab", "alice"))
    assert only.candidates == [] and only.priority == 10  # waits for `fast`, at that board's priority


def test_every_n_leases_checks_a_board_when_the_nth_lease_ends_not_while_it_holds_the_board():
    checker = HealthChecker(None, None, None, b"", HealthSettings(every_leases=2))  # type: ignore[arg-type]
    asked: list[tuple[str, ...]] = []
    checker.request = lambda *args: asked.append(args)  # type: ignore[method-assign]
    for n in (1, 2):
        held = Lease("lab", f"l{n}", "alice", exporter="rig")
        checker.lease_event("granted", held)
        assert asked == []  # the board is held: a check now would only wait for this lease
        held.ended = True
        checker.lease_event("released", held)
    assert asked == [("lab", "rig", "after 2 leases")]
    never_granted = Lease("lab", "l3", "alice", ended=True)  # expired in the queue: served nothing
    checker.lease_event("expired", never_granted)
    own = Lease("lab", "l4", HEALTH_CLIENT, exporter="rig", ended=True)
    checker.lease_event("released", own)
    assert checker.leases_since[("lab", "rig")] == 2  # neither counts


def test_the_dashboard_lists_a_boards_queue_in_the_order_the_scheduler_grants_it(tmp_path):
    store = SqliteStore(str(tmp_path / "c.db"))
    online = SimpleNamespace(online=lambda exporter: True)
    snapshots = Snapshots(store, online, RouterProbe([], b""), "ctl:8082")  # type: ignore[arg-type]

    async def scenario() -> list[str]:
        await store.save_exporter(Exporter("lab", "rig", labels={"b": "x"}, health="maintenance"))
        await store.create_lease(Lease("lab", "ordinary", "alice", selector="b=x"))
        await store.create_lease(
            Lease("lab", "explicit", "ops", exporter_name="rig", out_of_service_ok=True)
        )  # asked later, granted first (scheduler._queue)
        (board,) = await snapshots._boards(None)
        return [entry["lease"] for entry in board["queue"]]

    assert asyncio.run(scenario()) == ["explicit", "ordinary"]


def test_a_running_check_never_holds_the_default_executor_the_store_and_leader_election_use(monkeypatch):
    checker = HealthChecker(None, None, None, b"", HealthSettings())  # type: ignore[arg-type]
    monkeypatch.setattr(health_checks, "_call_through_router", lambda *args: CheckOutcome(True, "", 0.0))
    release = threading.Event()

    async def scenario() -> CheckOutcome:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        busy = loop.run_in_executor(None, release.wait)  # the default executor is full (checks elsewhere)
        try:
            return await asyncio.wait_for(checker._check(None, "lease"), 5)
        finally:
            release.set()
            await busy

    assert asyncio.run(scenario()).ok


def test_only_the_replica_that_schedules_starts_automatic_checks():
    scheduler = SimpleNamespace(leading=lambda: False)
    checker = HealthChecker(None, scheduler, None, b"", HealthSettings())  # type: ignore[arg-type]

    async def scenario() -> int:
        checker.request("lab", "rig", "back online")
        started = len(checker.tasks)
        for task in checker.tasks:
            task.cancel()
        return started

    assert asyncio.run(scenario()) == 0  # a follower starts nothing: the leader checks once
