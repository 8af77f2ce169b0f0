"""The audit history through real controllerd: `jumpstarter admin audit` after real lease lives.

Leases are driven by raw ClientService calls, exporters are StubExporters, the audit is read
with the real CLI (`jumpstarter admin audit … -o json`), and `audit_checks.audit_problems`
checks the run's invariants. The kill -9 test has its own controller.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from jumpstarter.client.v1 import client_pb2

from .audit_checks import audit_problems
from .central import (
    Central,
    Peer,
    S,
    StubExporter,
    close_central,
    condition,
    is_true,
    seconds,
    short,
    start_central,
    wait_until,
)
from .central import Scope as SharedScope

OFFLINE_AFTER = 2.0
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(prefix="jsa-", offline_after=OFFLINE_AFTER)
    try:
        yield c
    finally:
        close_central(c)


class Scope(SharedScope):
    def audit(self, *args: str) -> list[dict[str, Any]]:
        return json.loads(self.central.admin(self.ns, "audit", *args, "-o", "json"))  # type: ignore[no-any-return]

    def active(self) -> set[tuple[str, str]]:
        rows = json.loads(self.central.admin(self.ns, "get", "leases", "-o", "json"))
        return {(row["namespace"], row["name"]) for row in rows if row["exporter"]}


@pytest.fixture
def scope(central: Central, request: pytest.FixtureRequest) -> Iterator[Scope]:
    s = Scope(central, request.node.name.removeprefix("test_")[:40].replace("_", "-"))
    try:
        yield s
    finally:
        s.close()


def test_a_lease_life_appears_in_admin_audit_in_order_with_its_actors(scope: Scope):
    board = scope.exporter("board", board="life")
    holder, alice, bob = scope.client("holder"), scope.client("alice"), scope.client("bob")
    held = holder.create_lease("board=life")
    lease = alice.create_lease("board=life", duration=60)
    assert condition(lease, "Pending").status == "True"  # waits behind `held`
    holder.delete_lease(held.name)
    alice.wait_ready(lease.name)
    alice.update_lease(client_pb2.Lease(name=lease.name, duration=seconds(600)), ["duration"])
    alice.update_lease(client_pb2.Lease(name=lease.name, client=bob.identity.resource), ["client"])
    bob.delete_lease(lease.name)

    records = scope.audit("--lease", short(lease.name))
    assert [(r["action"], r["actor"]) for r in records] == [
        ("created", "client:alice"),
        ("queued", "scheduler"),
        ("granted", "scheduler"),
        ("extended", "client:alice"),
        ("transferred", "client:alice"),
        ("released", "client:bob"),
    ]
    queued, granted, extended, transferred = records[1], records[2], records[3], records[4]
    assert queued["reason"] == "NotAvailable" and "queue position 1" in queued["message"]
    assert granted["exporter"] == board.name and granted["detail"]["priority"] == 0
    assert extended["detail"]["new_end"] > extended["detail"]["old_end"]
    assert transferred["message"] == "client alice → bob" and transferred["client"] == "bob"
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert "token" not in json.dumps(records).lower()

    table = scope.central.admin(scope.ns, "audit", "--lease", lease.name)  # the full resource name works too
    assert table.splitlines()[0].split()[:5] == ["ID", "TIME", "KIND", "NAME", "ACTION"]
    assert "transferred" in table and "client:bob" in table
    assert {r["action"] for r in scope.audit("--client", "bob")} >= {"created", "transferred", "released"}
    assert scope.audit("--lease", short(lease.name), "--since", "2099-01-01T00:00:00Z") == []
    recent = scope.audit("--exporter", board.name, "--since", "10m")
    assert [r["action"] for r in recent if r["kind"] == "exporter"][:1] == ["created"]
    assert audit_problems(scope.audit(), active=scope.active()) == []


def test_an_exporter_going_offline_pauses_the_lease_and_the_audit_says_why(scope: Scope, central: Central):
    board = scope.exporter("flaky", board="off")
    alice = scope.client("alice")
    lease = alice.create_lease("board=off", duration=300)
    assert is_true(lease, "Ready")

    board.close()  # gone without a word: offline after OFFLINE_AFTER of silence
    alice.wait_lease(lease.name, lambda le: is_true(le, "Paused"), "Paused=True", OFFLINE_AFTER + 20)
    back = StubExporter(central, board.identity).start()
    scope.closers.append(back.close)
    alice.wait_lease(lease.name, lambda le: condition(le, "Paused") is None, "resumed", 20)

    records = scope.audit("--exporter", "flaky")
    granted = next(r for r in records if r["action"] == "granted")  # (it came online before: maybe audited)
    transitions = [
        (r["kind"], r["action"], r["reason"])
        for r in records
        if r["action"] in ("paused", "resumed", "offline", "online") and r["id"] > granted["id"]
    ]
    assert transitions == [
        ("exporter", "offline", "ExporterOffline"),
        ("lease", "paused", "ExporterOffline"),
        ("exporter", "online", "ExporterOnline"),
        ("lease", "resumed", "ExporterOnline"),
    ], records
    paused = next(r for r in records if r["action"] == "paused")
    assert paused["actor"] == "scheduler" and "no word from the exporter" in paused["message"]
    assert paused["lease"] == short(lease.name)
    registered = [r for r in records if r["action"] == "registered"]
    assert len(registered) == 2 and registered[0]["actor"] == "exporter:flaky"
    assert audit_problems(scope.audit(), active=scope.active()) == []


@pytest.mark.timeout(180)
def test_after_kill_9_amid_grants_and_releases_the_audit_and_the_lease_state_agree():
    central = start_central(prefix="jsk-", offline_after=30.0)
    stubs: list[StubExporter] = []
    peers: list[Peer] = []
    stop = threading.Event()
    try:
        ns = "crash"
        for i in range(3):
            stubs.append(StubExporter(central, central.create("exporter", ns, f"b{i}", pool="k")).start())
        peers = [
            central.peer(identity) for identity in central.create_many("client", ns, ["c0", "c1", "c2", "c3"])
        ]
        granted = threading.Event()

        def churn(peer: Peer) -> None:
            """Request, and release what was granted, until the controller dies under it."""
            while not stop.is_set():
                try:
                    lease = peer.create_lease("pool=k", duration=300)
                    if is_true(lease, "Ready"):
                        granted.set()
                        peer.delete_lease(lease.name)
                except grpc.RpcError:
                    return

        threads = [threading.Thread(target=churn, args=(p,), daemon=True) for p in peers]
        for thread in threads:
            thread.start()
        wait_until(granted.is_set, 30, "a first grant")
        wait_until(lambda: len(read_audit(central, ns)) >= 40, 60, "churn in the audit")
        assert central.stop_controller(signal.SIGKILL) == -signal.SIGKILL  # right amid grants and releases
        stop.set()
        for thread in threads:
            thread.join(15)
        central.start_controller()

        rows = json.loads(central.admin(ns, "get", "leases", "--all", "-o", "json"))
        records = read_audit(central, ns)
        by_lease: dict[str, list[str]] = {}
        for record in records:
            if record["kind"] == "lease":
                by_lease.setdefault(record["name"], []).append(record["action"])
        assert set(by_lease) == {row["name"] for row in rows}, (
            "a lease without its created record, or a record without its lease"
        )
        for row in rows:
            actions = by_lease[row["name"]]
            assert actions[0] == "created", (row["name"], actions)
            assert ("granted" in actions) == (row["exporter"] is not None), (row, actions)
            assert bool({"released", "expired", "ended"} & set(actions)) == row["ended"], (row, actions)
        active = {(row["namespace"], row["name"]) for row in rows if row["exporter"] and not row["ended"]}
        assert audit_problems(records, active=active) == []
        assert any(not row["ended"] for row in rows) or any(a.count("granted") for a in by_lease.values())
    finally:
        stop.set()
        for peer in peers:
            peer.close()
        for stub in stubs:
            stub.close()
        close_central(central)


def read_audit(central: Central, namespace: str) -> list[dict[str, Any]]:
    from jumpstarter.cli.admin import call

    return call(central.admin_socket, "audit", namespace=namespace, limit=10_000)  # type: ignore[no-any-return]


def test_admin_actions_and_board_changes_are_audited_without_tokens(scope: Scope):
    board = scope.exporter("adm", board="adm")
    alice = scope.client("alice")
    lease = alice.create_lease("board=adm", duration=300)
    assert is_true(lease, "Ready")
    board.report(S.EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED)
    admin = scope.central.admin
    admin(scope.ns, "label", "exporter", "adm", "-l", "board=adm2")
    admin(scope.ns, "disable", "exporter", "adm")
    admin(scope.ns, "policy", "set", "everyone", "--priority", "3")
    admin(scope.ns, "policy", "delete", "everyone")
    admin(scope.ns, "rotate", "client", "alice", "-o", f"{scope.central.directory}/alice2.yaml")
    admin(scope.ns, "revoke", "client", "alice")
    admin(scope.ns, "delete", "exporter", "adm")  # its lease ends for that cause

    records = scope.audit()
    seen = [(r["kind"], r["name"], r["action"], r["actor"]) for r in records]
    expected = [
        ("client", "alice", "created", "admin"),
        ("lease", short(lease.name), "granted", "scheduler"),
        ("exporter", "adm", "status", "exporter:adm"),
        ("exporter", "adm", "labeled", "admin"),
        ("exporter", "adm", "disabled", "admin"),
        ("policy", "everyone", "set", "admin"),
        ("policy", "everyone", "deleted", "admin"),
        ("client", "alice", "rotated", "admin"),
        ("client", "alice", "revoked", "admin"),
        ("lease", short(lease.name), "ended", "admin"),
        ("exporter", "adm", "deleted", "admin"),
    ]
    remaining = iter(seen)
    assert all(step in remaining for step in expected), seen  # in this order, among the others
    failed = next(r for r in records if r["action"] == "status" and r["reason"] == "HookFailed")
    assert "AFTER_LEASE_HOOK_FAILED" in failed["message"]
    ended = next(r for r in records if r["action"] == "ended")
    assert ended["reason"] == "ExporterDeleted" and ended["exporter"] == "adm"
    relabeled = next(r for r in records if r["action"] == "labeled")
    before, after = relabeled["message"].split(" → ")
    assert "board=adm," in before and "board=adm2," in after
    rotated = yaml.safe_load(Path(f"{scope.central.directory}/alice2.yaml").read_text())["token"]
    everything = json.dumps(scope.audit())
    assert rotated not in everything and "eyJ" not in everything  # no JWT in any record
    assert audit_problems(scope.audit(), active=scope.active()) == []


def test_only_revocations_that_happen_are_audited(scope: Scope):
    """Revoking a jti twice, or the tokens of a client that does not exist, stored events for nothing."""
    from jumpstarter.cli.admin import call
    from jumpstarter.errors import JumpstarterError

    socket = scope.central.admin_socket
    scope.client("alice")
    jti = next(
        t["jti"]
        for t in call(socket, "get", kind="tokens", namespace=scope.ns)
        if (t["namespace"], t["name"]) == (scope.ns, "alice")
    )
    assert call(socket, "revoke", jti=jti) == {"revoked": 1}
    assert call(socket, "revoke", jti=jti) == {"revoked": 0}  # already revoked: nothing happened
    with pytest.raises(JumpstarterError, match="not found"):
        call(socket, "revoke", kind="client", namespace=scope.ns, name="ghost")
    with pytest.raises(JumpstarterError, match="name"):
        call(socket, "revoke", kind="client", namespace=scope.ns, name="x" * 10_000)
    revoked = [(r["name"], r["message"]) for r in scope.audit() if r["action"] == "revoked"]
    assert revoked == [("alice", f"token {jti}")], revoked
