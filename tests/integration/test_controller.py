"""controllerd (+ routerd) as real processes on loopback with TLS, driven by raw gRPC stubs.

Clients call `ClientService`/`ControllerService` with the metadata of PROTOCOL.md §3;
exporters are `StubExporter`s (Register, ReportStatus, Status, Listen) or, where a
crash or a real tunnel matters, real `exporterd` processes. One controllerd/routerd
pair serves the module (offline_after and dial_ready_wait shortened); each test works
in its own namespace. Restart tests that would disturb the others get their own pair.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controllerd.liveness import silence_window
from jumpstarter.client.v1 import client_pb2
from jumpstarter.v1 import jumpstarter_pb2

from .central import (
    Central,
    Identity,
    Peer,
    S,
    StubExporter,
    close_central,
    condition,
    get_report,
    is_true,
    short,
    start_central,
    stop_process,
    stream_of,
    wait_until,
)

OFFLINE_AFTER = 2.0
DIAL_READY_WAIT = 1.5
SCHEDULER_MAX_TICK = 5.0  # controllerd.scheduler.MAX_TICK
CODE = grpc.StatusCode

pytestmark = pytest.mark.timeout(40)


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(offline_after=OFFLINE_AFTER, dial_ready_wait=DIAL_READY_WAIT)
    try:
        yield c
    finally:
        close_central(c)


class Scope:
    """Per-test peers, stub exporters and exporterd processes, all closed at the end."""

    def __init__(self, central: Central, namespace: str) -> None:
        self.central = central
        self.ns = namespace
        self.closers: list[Callable[[], Any]] = []

    def client(self, name: str, **labels: str) -> Peer:
        peer = self.central.peer(self.central.create("client", self.ns, name, **labels))
        self.closers.append(peer.close)
        return peer

    def exporter_identity(self, name: str, **labels: str) -> Identity:
        return self.central.create("exporter", self.ns, name, **labels)

    def exporter(self, name: str, *, auto: bool = True, **labels: str) -> StubExporter:
        stub = StubExporter(self.central, self.exporter_identity(name, **labels), auto=auto)
        self.closers.append(stub.close)
        return stub.start()

    def stub(self, identity: Identity, *, auto: bool = True) -> StubExporter:
        stub = StubExporter(self.central, identity, auto=auto)
        self.closers.append(stub.close)
        return stub.start()

    def exporterd(self, identity: Identity, tag: str) -> Any:
        """A real exporterd for `identity` (its admin-written config plus an `export:` tree)."""
        socket = os.path.join(self.central.directory, f"{identity.name}.sock")
        echo = {"echo": {"type": "network.echo"}}
        process = self.central.spawn_exporterd(f"exporterd-{tag}", identity.config, echo, socket)
        self.closers.append(lambda: stop_process(process))
        return process

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass


@pytest.fixture
def scope(central: Central, request: pytest.FixtureRequest) -> Iterator[Scope]:
    namespace = request.node.name.removeprefix("test_")[:40].replace("_", "-")
    s = Scope(central, namespace)
    try:
        yield s
    finally:
        s.close()


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value  # type: ignore[return-value]


def pending_message(lease: Any) -> str:
    c = condition(lease, "Pending")
    assert c is not None and c.status == "True", f"not pending: {lease}"
    return str(c.message)


def ts(message: Any) -> float:
    return message.seconds + message.nanos / 1e9


def wait_exporter_status(peer: Peer, name: str, status: int, timeout: float = 10) -> None:
    wait_until(
        lambda: (e := peer.get_exporter(name)).online and e.status == status,
        timeout,
        f"exporter {name} online with status {status}",
    )


# -- the queue ---------------------------------------------------------------------------------


def test_second_client_waits_in_the_queue_and_gets_the_board_after_release(scope: Scope):
    board = scope.exporter("board", board="one")
    alice, bob, carol = scope.client("alice"), scope.client("bob"), scope.client("carol")

    first = alice.create_lease("board=one")
    assert is_true(first, "Ready") and first.exporter.endswith("/exporters/board")
    second = bob.create_lease("board=one")
    third = carol.create_lease("board=one")
    for lease, position in ((second, 1), (third, 2)):
        assert not lease.HasField("exporter")
        assert condition(lease, "Pending").reason == "NotAvailable"
        assert pending_message(lease).endswith(f"queue position {position}"), pending_message(lease)

    alice.delete_lease(first.name)
    again = rpc_error(lambda: alice.delete_lease(first.name))
    assert again.code() == CODE.FAILED_PRECONDITION and "already released" in again.details()
    got = bob.wait_ready(second.name)
    assert got.exporter == first.exporter
    status = board.wait_status(lambda s: s.leased and s.lease_name == short(second.name), "bob's lease")
    assert status.client_name == "bob"
    ended = alice.get_lease(first.name)
    assert (condition(ended, "Ready").status, condition(ended, "Ready").reason) == ("False", "Released")
    assert pending_message(carol.get_lease(third.name)).endswith("queue position 1")


def test_second_client_gets_the_board_when_the_first_lease_expires(scope: Scope):
    scope.exporter("board", board="one")
    alice, bob = scope.client("alice"), scope.client("bob")

    first = alice.create_lease("board=one", duration=1.0)
    assert is_true(first, "Ready")
    second = bob.create_lease("board=one")
    assert pending_message(second).endswith("queue position 1")

    got = bob.wait_ready(second.name, timeout=5)
    expired = alice.get_lease(first.name)
    assert condition(expired, "Ready").reason == "Expired"
    assert got.exporter == first.exporter
    assert ts(got.effective_begin_time) >= ts(expired.effective_end_time)


def test_back_to_back_leases_reach_the_exporter_as_an_end_then_a_start(scope: Scope):
    board = scope.exporter("board", board="b2b")
    alice, bob = scope.client("alice"), scope.client("bob")
    first = alice.create_lease("board=b2b")
    board.wait_status(lambda s: s.lease_name == short(first.name), "alice's lease")
    second = bob.create_lease("board=b2b")
    assert pending_message(second).endswith("queue position 1")

    # What an exporter does after its client's EndSession: AVAILABLE, then release. The
    # controller ends alice's lease and grants bob's in the same pass.
    board.report(S.EXPORTER_STATUS_AVAILABLE)
    board.stub.ReleaseLease(
        jumpstarter_pb2.ReleaseLeaseRequest(name=short(first.name)), metadata=board.md, timeout=10
    )
    board.wait_status(lambda s: s.lease_name == short(second.name), "bob's lease")
    seen = [(s.leased, s.lease_name) for s in board.statuses]
    assert seen == [(False, ""), (True, short(first.name)), (False, ""), (True, short(second.name))], seen

    board.close_status()  # a new stream of the same exporter starts from what it was told
    board.open_status()
    wait_until(lambda: len(board.statuses) >= 5, 10, "the new stream's first message")
    assert [(s.leased, s.lease_name) for s in board.statuses[4:]] == [(True, short(second.name))]


def test_higher_priority_lease_overtakes_an_earlier_lower_priority_one(scope: Scope):
    central = scope.central
    central.admin(scope.ns, "policy", "set", "low", "--clients", "tier=low", "--priority", "1")
    central.admin(scope.ns, "policy", "set", "high", "--clients", "tier=high", "--priority", "10")
    scope.exporter("board", board="p")
    holder, low, high = (
        scope.client("holder", tier="low"),
        scope.client("low", tier="low"),
        scope.client("high", tier="high"),
    )

    held = holder.create_lease("board=p")
    assert is_true(held, "Ready")
    early_low = low.create_lease("board=p")
    assert pending_message(early_low).endswith("queue position 1")
    late_high = high.create_lease("board=p")
    assert pending_message(late_high).endswith("queue position 1")
    assert pending_message(low.get_lease(early_low.name)).endswith("queue position 2")

    holder.delete_lease(held.name)
    high.wait_ready(late_high.name)
    assert not is_true(low.get_lease(early_low.name), "Ready")
    high.delete_lease(late_high.name)
    low.wait_ready(early_low.name)


def test_policy_maximum_duration_makes_a_longer_request_unsatisfiable(scope: Scope):
    out = scope.central.admin(
        scope.ns, "policy", "set", "short", "--clients", "team=a", "--max-duration", "1m", "-o", "json"
    )
    assert json.loads(out)["maximum_duration"] == 60.0
    scope.exporter("board", board="m")
    team_a, team_b = scope.client("a", team="a"), scope.client("b", team="b")

    too_long = team_a.create_lease("board=m", duration=120)
    verdict = condition(too_long, "Unsatisfiable")
    assert (verdict.status, verdict.reason) == ("True", "NoAccess")
    assert not too_long.HasField("exporter")
    assert short(too_long.name) not in {short(le.name) for le in team_a.list_leases()}  # ended at once

    no_policy = team_b.create_lease("board=m", duration=30)
    assert condition(no_policy, "Unsatisfiable").reason == "NoAccess"

    allowed = team_a.create_lease("board=m", duration=30)
    assert is_true(allowed, "Ready")


# -- expiry and transfer -----------------------------------------------------------------------


def test_lease_expires_at_its_end_time_and_the_exporter_is_told(scope: Scope):
    board = scope.exporter("board", board="e")
    alice = scope.client("alice")

    lease = alice.create_lease("board=e", duration=1.5)
    assert is_true(lease, "Ready")
    ended = alice.wait_lease(lease.name, lambda le: condition(le, "Ready").status == "False", "ended", 5)
    assert condition(ended, "Ready").reason == "Expired"
    held = ts(ended.effective_end_time) - ts(ended.effective_begin_time)
    assert 1.5 <= held < 2.0, f"held {held:.3f}s for a 1.5s lease"

    board.wait_status(lambda s: not s.leased, "leased=false after expiry")
    seen = [(s.leased, s.lease_name, s.client_name) for s in board.statuses]
    assert seen == [(False, "", ""), (True, short(lease.name), "alice"), (False, "", "")]


def test_transfer_gives_dial_rights_to_the_new_owner_only(scope: Scope):
    board = scope.exporter("board", board="t")
    alice, bob = scope.client("alice"), scope.client("bob")
    lease = alice.create_lease("board=t")
    assert is_true(lease, "Ready")

    moved = alice.update_lease(client_pb2.Lease(name=lease.name, client=bob.identity.resource), ["client"])
    assert moved.client == bob.identity.resource
    assert moved.exporter == lease.exporter and is_true(moved, "Ready")
    board.wait_status(lambda s: s.client_name == "bob", "the exporter told of the new owner")

    dial = bob.dial(lease.name)
    assert stream_of(board.listener(lease.name).next().router_token) == stream_of(dial.router_token)
    denied = rpc_error(lambda: alice.dial(lease.name))
    assert denied.code() == CODE.PERMISSION_DENIED and "permission denied" in denied.details()
    assert rpc_error(lambda: alice.delete_lease(lease.name)).code() == CODE.PERMISSION_DENIED
    bob.delete_lease(lease.name)


def test_legacy_lease_rpcs_request_get_list_and_release(scope: Scope):
    from google.protobuf.duration_pb2 import Duration

    from jumpstarter.v1 import jumpstarter_pb2, kubernetes_pb2

    scope.exporter("board", board="legacy")
    alice, bob = scope.client("alice"), scope.client("bob")
    requested = alice.controller.RequestLease(
        jumpstarter_pb2.RequestLeaseRequest(
            duration=Duration(seconds=60),
            selector=kubernetes_pb2.LabelSelector(match_labels={"board": "legacy"}),
        ),
        metadata=alice.md,
    )
    got = alice.controller.GetLease(jumpstarter_pb2.GetLeaseRequest(name=requested.name), metadata=alice.md)
    assert dict(got.selector.match_labels) == {"board": "legacy"} and got.duration.seconds == 60
    assert got.HasField("begin_time") and got.exporter_uuid
    assert any(c.type == "Ready" and c.status == "True" for c in got.conditions)
    names = alice.controller.ListLeases(jumpstarter_pb2.ListLeasesRequest(), metadata=alice.md).names
    assert list(names) == [requested.name]
    denied = rpc_error(
        lambda: bob.controller.GetLease(jumpstarter_pb2.GetLeaseRequest(name=requested.name), metadata=bob.md)
    )
    assert denied.code() == CODE.PERMISSION_DENIED
    alice.controller.ReleaseLease(jumpstarter_pb2.ReleaseLeaseRequest(name=requested.name), metadata=alice.md)
    ended = alice.controller.GetLease(jumpstarter_pb2.GetLeaseRequest(name=requested.name), metadata=alice.md)
    assert ended.HasField("end_time")
    assert any(c.type == "Ready" and c.status == "False" and c.reason == "Released" for c in ended.conditions)


# -- exporter crash, controller and router restarts ----------------------------------------------


def test_lease_is_paused_once_its_exporter_has_been_offline_for_offline_after(scope: Scope):
    board = scope.exporter("board", board="o")
    alice = scope.client("alice")
    lease = alice.create_lease("board=o")
    assert is_true(lease, "Ready")

    board.close()  # the Status stream and the connection go away
    gone = time.monotonic()
    paused = alice.wait_lease(
        lease.name, lambda le: is_true(le, "Paused"), "Paused=True", OFFLINE_AFTER + 1.5
    )
    # the controller can only prove it answered keepalive up to `silence_window` before the stream closed
    assert time.monotonic() - gone >= OFFLINE_AFTER - silence_window(OFFLINE_AFTER) - 0.1
    assert condition(paused, "Paused").reason == "ExporterOffline"
    assert is_true(paused, "Ready") and not paused.HasField("effective_end_time")


def test_exporter_crash_pauses_the_lease_and_it_resumes_with_its_end_time(scope: Scope):
    identity = scope.exporter_identity("crash", board="c")
    alice = scope.client("alice")
    first = scope.exporterd(identity, "1")
    wait_exporter_status(alice, "crash", S.EXPORTER_STATUS_AVAILABLE)
    duration = 10.0
    lease = alice.create_lease(exporter_name="crash", duration=duration)
    assert is_true(lease, "Ready")
    wait_exporter_status(alice, "crash", S.EXPORTER_STATUS_LEASE_READY)
    report = get_report(
        scope.central, alice.dial(lease.name), os.path.join(scope.central.directory, "t1.sock")
    )
    assert report.reports, "GetReport through the router returned no drivers"

    first.kill()  # SIGKILL: no goodbye to the controller
    first.wait()
    paused = alice.wait_lease(
        lease.name,
        lambda le: is_true(le, "Paused"),
        "Paused=True",
        OFFLINE_AFTER + SCHEDULER_MAX_TICK + 1.5,
    )
    assert is_true(paused, "Ready") and not paused.HasField("effective_end_time")
    assert short(lease.name) in {short(le.name) for le in alice.list_leases()}
    refused = rpc_error(lambda: alice.dial(lease.name))
    assert refused.code() == CODE.FAILED_PRECONDITION and "not ready" in refused.details(), refused.details()

    scope.exporterd(identity, "2")
    alice.wait_lease(lease.name, lambda le: condition(le, "Paused") is None, "resumed", 5)
    wait_exporter_status(alice, "crash", S.EXPORTER_STATUS_LEASE_READY, 5)
    report = get_report(
        scope.central, alice.dial(lease.name), os.path.join(scope.central.directory, "t2.sock")
    )
    assert report.reports
    restarted_log = scope.central.log("exporterd-2")  # the controller re-sent leased=true on Status:
    assert '"lease started"' in restarted_log and short(lease.name) in restarted_log

    ended = alice.wait_lease(
        lease.name, lambda le: condition(le, "Ready").status == "False", "expiry", duration + 2
    )
    assert condition(ended, "Ready").reason == "Expired"
    held = ts(ended.effective_end_time) - ts(ended.effective_begin_time)
    assert duration <= held < duration + 0.8, f"held {held:.3f}s: the pause moved the end time"


@pytest.mark.timeout(180)
def test_a_frozen_exporterd_goes_offline_pauses_its_lease_gets_nothing_new_and_resumes(scope: Scope):
    identity = scope.exporter_identity("frozen", board="fz")
    alice, bob = scope.client("alice"), scope.client("bob")
    process = scope.exporterd(identity, "frozen")
    wait_exporter_status(alice, "frozen", S.EXPORTER_STATUS_AVAILABLE)
    lease = alice.create_lease(exporter_name="frozen", duration=300)
    wait_exporter_status(alice, "frozen", S.EXPORTER_STATUS_LEASE_READY)
    bound = OFFLINE_AFTER + SCHEDULER_MAX_TICK + 10  # generous: the machine may be loaded

    # SIGSTOP: the process is frozen but its TCP connection stays open (the kernel still ACKs)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        paused = alice.wait_lease(lease.name, lambda le: is_true(le, "Paused"), "Paused=True", bound)
        assert condition(paused, "Paused").reason == "ExporterOffline"
        assert is_true(paused, "Ready") and not paused.HasField("effective_end_time")
        assert not alice.get_exporter("frozen").online
        refused = rpc_error(lambda: alice.dial(lease.name))  # at once, instead of a hung driver call
        assert refused.code() == CODE.FAILED_PRECONDITION and "offline" in refused.details()
    finally:
        os.kill(process.pid, signal.SIGCONT)
    alice.wait_lease(lease.name, lambda le: condition(le, "Paused") is None, "resumed", 30)
    wait_exporter_status(alice, "frozen", S.EXPORTER_STATUS_LEASE_READY, 30)
    report = get_report(
        scope.central, alice.dial(lease.name), os.path.join(scope.central.directory, "fz.sock")
    )
    assert report.reports, "GetReport through the router failed after SIGCONT"

    # Frozen while free: a new lease request waits (Offline) instead of being granted to it.
    alice.delete_lease(lease.name)
    wait_exporter_status(alice, "frozen", S.EXPORTER_STATUS_AVAILABLE, 30)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not alice.get_exporter("frozen").online, bound, "the frozen exporter offline")
        waiting = bob.create_lease(exporter_name="frozen")
        assert condition(waiting, "Pending").reason == "Offline", waiting
        assert not waiting.HasField("exporter")
    finally:
        os.kill(process.pid, signal.SIGCONT)
    got = bob.wait_ready(waiting.name, 30)
    assert got.exporter.endswith("/exporters/frozen")
    bob.delete_lease(waiting.name)


def last_seen(central: Central, namespace: str, name: str) -> float:
    from jumpstarter.cli.admin import call

    rows = call(central.admin_socket, "get", kind="exporters", namespace=namespace)
    return float(next(row["last_seen"] for row in rows if row["name"] == name))


@pytest.mark.timeout(60)
def test_last_seen_moves_only_with_what_the_exporter_sends(scope: Scope):
    """The controller never vouches for an exporter itself; exporterd's heartbeat keeps it fresh."""
    silent = scope.exporter("silent", board="ls")  # a Status stream, and nothing else
    silent_seen = last_seen(scope.central, scope.ns, "silent")
    process = scope.exporterd(scope.exporter_identity("beating", board="lb"), "beating")
    alice = scope.client("alice")
    wait_exporter_status(alice, "beating", S.EXPORTER_STATUS_AVAILABLE)

    def status_stream_open() -> bool:
        for line in scope.central.log("controllerd").splitlines():
            if '"exporter online"' in line and json.loads(line).get("exporter") == "beating":
                return True
        return False

    # its Status stream is open: the last thing it sends before the first heartbeat
    wait_until(status_stream_open, 10, "exporterd's Status stream")
    registered = last_seen(scope.central, scope.ns, "beating")

    heartbeat = 10.0  # exporterd.controller_calls.HEARTBEAT
    wait_until(
        lambda: last_seen(scope.central, scope.ns, "beating") > registered,
        heartbeat + 15,
        "exporterd's heartbeat to refresh last_seen",
        interval=0.2,
    )
    assert process.poll() is None
    assert last_seen(scope.central, scope.ns, "silent") == silent_seen, "the controller refreshed last_seen"
    assert alice.get_exporter("silent").online, "its open Status stream answers keepalive: still online"
    silent.close()


def test_controller_restart_keeps_leases_queue_and_assignments():
    central = start_central(prefix="jscr-", router=False, offline_after=OFFLINE_AFTER)
    stubs: list[StubExporter] = []
    try:
        alice = central.peer(central.create("client", "r", "alice"))
        bob = central.peer(central.create("client", "r", "bob"))
        exporter = central.create("exporter", "r", "keep", board="k")
        stubs.append(StubExporter(central, exporter).start())
        held = alice.create_lease("board=k", duration=300)
        queued = bob.create_lease("board=k", duration=300)
        assert is_true(held, "Ready") and pending_message(queued).endswith("queue position 1")

        assert central.stop_controller(signal.SIGTERM) == 0
        central.start_controller()

        after = alice.get_lease(held.name)  # same token: the signing key persisted too
        assert after.exporter == held.exporter and is_true(after, "Ready")
        assert after.effective_begin_time == held.effective_begin_time
        assert not after.HasField("effective_end_time")
        assert pending_message(bob.get_lease(queued.name)).endswith("queue position 1")
        assert sorted(short(le.name) for le in alice.list_leases()) == sorted(
            [short(held.name), short(queued.name)]
        )
        stubs[0].close()
        stubs.append(StubExporter(central, exporter).start())  # the exporter reconnects
        first = stubs[1].statuses[0]
        assert (first.leased, first.lease_name, first.client_name) == (True, short(held.name), "alice")

        alice.delete_lease(held.name)
        assert bob.wait_ready(queued.name).exporter == held.exporter
    finally:
        for stub in stubs:
            stub.close()
        close_central(central)


def test_a_new_dial_works_after_the_router_restarts(scope: Scope):
    identity = scope.exporter_identity("rtr", board="r")
    alice = scope.client("alice")
    scope.exporterd(identity, "rtr")
    wait_exporter_status(alice, "rtr", S.EXPORTER_STATUS_AVAILABLE)
    lease = alice.create_lease("board=r")
    wait_exporter_status(alice, "rtr", S.EXPORTER_STATUS_LEASE_READY)
    central = scope.central
    assert get_report(central, alice.dial(lease.name), os.path.join(central.directory, "r1.sock")).reports

    assert central.stop_router(signal.SIGTERM) == 0
    central.start_router()
    report = get_report(central, alice.dial(lease.name), os.path.join(central.directory, "r2.sock"))
    assert report.reports
    alice.delete_lease(lease.name)


# -- tokens ------------------------------------------------------------------------------------------


def test_revoked_tokens_fail_at_once_and_a_rotated_one_works(scope: Scope):
    board = scope.exporter("board", board="v")
    alice = scope.client("alice")
    assert alice.list_leases() == []

    assert "revoked 1 token of client alice" in scope.central.admin(scope.ns, "revoke", "client", "alice")
    refused = rpc_error(alice.list_leases)
    assert refused.code() == CODE.UNAUTHENTICATED and "revoked" in refused.details()
    assert rpc_error(lambda: alice.dial("whatever")).code() == CODE.UNAUTHENTICATED

    scope.central.admin(scope.ns, "revoke", "exporter", "board")
    refused = rpc_error(lambda: board.report(S.EXPORTER_STATUS_AVAILABLE))
    assert refused.code() == CODE.UNAUTHENTICATED

    path = os.path.join(scope.central.directory, "alice-rotated.yaml")
    scope.central.admin(scope.ns, "rotate", "client", "alice", "-o", path)
    rotated = alice.identity.metadata(yaml.safe_load(Path(path).read_text())["token"])
    alice.clients.ListLeases(client_pb2.ListLeasesRequest(parent=alice.parent), metadata=rotated, timeout=5)


def test_revoking_an_exporter_ends_its_open_status_and_listen_streams(scope: Scope):
    board = scope.exporter("board", board="vs")
    alice = scope.client("alice")
    lease = alice.create_lease("board=vs")
    listener = board.listener(lease.name)

    scope.central.admin(scope.ns, "revoke", "exporter", "board")
    # Otherwise a revoked exporter stays online, is granted new leases and keeps receiving router tokens.
    assert listener.ended.wait(3), "the revoked exporter's Listen stream is still open"
    assert listener.code == CODE.UNAUTHENTICATED
    assert board.status_thread is not None
    board.status_thread.join(3)
    assert not board.status_thread.is_alive(), "the revoked exporter's Status stream is still open"
    assert board.status_error is not None and board.status_error.code() == CODE.UNAUTHENTICATED


def test_tokens_for_another_endpoint_or_key_are_unauthenticated(scope: Scope):
    alice = scope.client("alice")
    claims = jwt.decode(alice.identity.token, options={"verify_signature": False})
    assert claims["aud"] == scope.central.endpoint
    key = serialization.load_pem_private_key(Path(scope.central.signing_key).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)

    def call(token: str) -> Any:
        return alice.clients.ListLeases(
            client_pb2.ListLeasesRequest(parent=alice.parent),
            metadata=alice.identity.metadata(token),
            timeout=5,
        )

    call(jwt.encode(claims, key, algorithm="ES256"))  # re-signed as is: accepted (the forgery is sound)
    elsewhere = jwt.encode({**claims, "aud": "controller-b.example:8082"}, key, algorithm="ES256")
    refused = rpc_error(lambda: call(elsewhere))
    assert refused.code() == CODE.UNAUTHENTICATED and "another controller" in refused.details()
    foreign = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert rpc_error(lambda: call(foreign)).code() == CODE.UNAUTHENTICATED


def test_a_client_cannot_dial_or_change_someone_elses_lease(scope: Scope):
    board = scope.exporter("board", board="d")
    alice, mallory = scope.client("alice"), scope.client("mallory")
    lease = alice.create_lease("board=d")
    assert is_true(lease, "Ready")

    denied = rpc_error(lambda: mallory.dial(lease.name))
    assert denied.code() == CODE.PERMISSION_DENIED and "permission denied" in denied.details()
    assert rpc_error(lambda: mallory.delete_lease(lease.name)).code() == CODE.PERMISSION_DENIED
    takeover = client_pb2.Lease(name=lease.name, client=mallory.identity.resource)
    assert rpc_error(lambda: mallory.update_lease(takeover, ["client"])).code() == CODE.PERMISSION_DENIED

    mine = alice.dial(lease.name)  # the refused Dial pushed nothing to the exporter
    assert stream_of(board.listener(lease.name).next().router_token) == stream_of(mine.router_token)
    assert board.listener(lease.name).drain() == []


# -- malformed requests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad(central: Central) -> Iterator[tuple[Peer, Identity]]:
    peer = central.peer(central.create("client", "bad", "alice"))
    exporter = central.create("exporter", "bad", "board", board="b")
    try:
        yield peer, exporter
    finally:
        peer.close()


def _create(peer: Peer, md: Any = None, parent: str | None = None, lease_id: str = "", **fields: Any) -> Any:
    lease = client_pb2.Lease(**fields)
    if "duration" not in fields:
        lease.duration.seconds = 60
    return peer.clients.CreateLease(
        client_pb2.CreateLeaseRequest(parent=parent or peer.parent, lease_id=lease_id, lease=lease),
        metadata=peer.md if md is None else md,
        timeout=5,
    )


def _md(peer: Peer, drop: str = "", **replace: str) -> tuple[tuple[str, str], ...]:
    out = []
    for key, value in peer.md:
        if key == drop:
            continue
        out.append((key, replace.get(key.replace("-", "_"), value)))
    return tuple(out)


MALFORMED: dict[str, tuple[Callable[[Peer, Identity], Any], grpc.StatusCode, str]] = {
    "unterminated selector": (
        lambda p, e: _create(p, selector="board in (x"),
        CODE.INVALID_ARGUMENT,
        "selector",
    ),
    "bad selector syntax": (lambda p, e: _create(p, selector="board=x=y"), CODE.INVALID_ARGUMENT, "selector"),
    "no selector and no exporter_name": (lambda p, e: _create(p), CODE.INVALID_ARGUMENT, "selector"),
    "eleven tags": (
        lambda p, e: _create(p, selector="board=b", tags={f"t{i}": "v" for i in range(11)}),
        CODE.INVALID_ARGUMENT,
        "tags",
    ),
    "nine context entries": (
        lambda p, e: _create(p, selector="board=b", context={f"k{i}": "v" for i in range(9)}),
        CODE.INVALID_ARGUMENT,
        "context",
    ),
    "negative duration": (
        lambda p, e: _create(p, selector="board=b", duration={"seconds": -5}),
        CODE.INVALID_ARGUMENT,
        "duration",
    ),
    "bad lease_id": (
        lambda p, e: _create(p, selector="board=b", lease_id="Not_Valid"),
        CODE.INVALID_ARGUMENT,
        "lease_id",
    ),
    "parent without namespaces/": (
        lambda p, e: _create(p, parent="bad", selector="board=b"),
        CODE.INVALID_ARGUMENT,
        "parent",
    ),
    "parent with an empty namespace": (
        lambda p, e: _create(p, parent="namespaces/", selector="board=b"),
        CODE.INVALID_ARGUMENT,
        "parent",
    ),
    "lease name of the wrong kind": (
        lambda p, e: p.get_lease("namespaces/bad/exporters/x"),
        CODE.INVALID_ARGUMENT,
        "resource name",
    ),
    "lease name too short": (lambda p, e: p.get_lease("namespaces/bad/leases"), CODE.INVALID_ARGUMENT, ""),
    "another namespace": (
        lambda p, e: _create(p, parent="namespaces/other", selector="board=b"),
        CODE.PERMISSION_DENIED,
        "namespace",
    ),
    "another namespace's lease": (
        lambda p, e: p.get_lease("namespaces/other/leases/x"),
        CODE.PERMISSION_DENIED,
        "namespace",
    ),
    "no metadata": (
        lambda p, e: _create(p, md=(), selector="board=b"),
        CODE.UNAUTHENTICATED,
        "authorization",
    ),
    "a bad parent and no token: authentication comes first": (
        lambda p, e: _create(p, parent="bogus", md=_md(p, drop="authorization"), selector="board=b"),
        CODE.UNAUTHENTICATED,
        "authorization",
    ),
    "no authorization": (
        lambda p, e: _create(p, md=_md(p, drop="authorization"), selector="board=b"),
        CODE.UNAUTHENTICATED,
        "authorization",
    ),
    "not a Bearer token": (
        lambda p, e: _create(p, md=_md(p, authorization="Basic YWxpY2U6eA=="), selector="board=b"),
        CODE.INVALID_ARGUMENT,
        "Bearer",
    ),
    "not a JWT": (
        lambda p, e: _create(p, md=_md(p, authorization="Bearer not-a-jwt"), selector="board=b"),
        CODE.UNAUTHENTICATED,
        "invalid token",
    ),
    "no jumpstarter-kind": (
        lambda p, e: _create(p, md=_md(p, drop="jumpstarter-kind"), selector="board=b"),
        CODE.INVALID_ARGUMENT,
        "jumpstarter-kind",
    ),
    "no jumpstarter-name": (
        lambda p, e: _create(p, md=_md(p, drop="jumpstarter-name"), selector="board=b"),
        CODE.INVALID_ARGUMENT,
        "jumpstarter-name",
    ),
    "kind does not match the token": (
        lambda p, e: _create(p, md=_md(p, jumpstarter_kind="Exporter"), selector="board=b"),
        CODE.INVALID_ARGUMENT,
        "kind",
    ),
    "name does not match the token": (
        lambda p, e: _create(p, md=_md(p, jumpstarter_name="bob"), selector="board=b"),
        CODE.PERMISSION_DENIED,
        "",
    ),
    "an exporter calling ClientService": (
        lambda p, e: _create(p, md=e.metadata(), selector="board=b"),
        CODE.INVALID_ARGUMENT,
        "clients",
    ),
    "a client calling Register": (
        lambda p, e: p.controller.Register(jumpstarter_pb2.RegisterRequest(), metadata=p.md, timeout=5),
        CODE.INVALID_ARGUMENT,
        "exporters",
    ),
    "Dial without a lease name": (lambda p, e: p.dial(""), CODE.INVALID_ARGUMENT, "lease name"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_are_refused_with_the_protocol_status(bad: tuple[Peer, Identity], case: str):
    call, code, text = MALFORMED[case]
    peer, exporter = bad
    error = rpc_error(lambda: call(peer, exporter))
    assert error.code() == code, f"{case}: {error.code()} {error.details()}"
    assert text.lower() in error.details().lower(), error.details()
    assert "Traceback" not in error.details()


def test_ten_tags_are_accepted_and_nothing_was_created_by_refused_requests(bad: tuple[Peer, Identity]):
    peer, _ = bad
    lease = _create(peer, selector="board=b", tags={f"t{i}": "v" for i in range(10)})
    assert len(lease.tags) == 10
    names = [short(le.name) for le in peer.list_leases(only_active=False)]
    assert names == [short(lease.name)]  # none of the malformed CreateLease calls left a lease


# -- concurrency -----------------------------------------------------------------------------------------


def test_thirty_clients_on_five_exporters_never_share_one(central: Central):
    namespace = "conc"
    exporters = central.create_many("exporter", namespace, [f"e{i}" for i in range(5)], pool="c")
    clients = central.create_many("client", namespace, [f"c{i:02d}" for i in range(30)])
    stubs = [StubExporter(central, identity).start() for identity in exporters]
    peers = [central.peer(identity) for identity in clients]
    monitor_peer = peers[0]
    violations: list[list[str]] = []
    snapshots = 0
    stop = threading.Event()

    def monitor() -> None:
        nonlocal snapshots
        while not stop.is_set():
            active = [le.exporter for le in monitor_peer.list_leases() if le.exporter]
            snapshots += 1
            if len(active) != len(set(active)):
                violations.append(active)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        barrier = threading.Barrier(len(peers))

        def request(peer: Peer) -> str:
            barrier.wait()
            return str(peer.create_lease("pool=c", duration=300).name)

        with ThreadPoolExecutor(len(peers)) as pool:
            names = list(pool.map(request, peers))
        owner = {short(name): peer for name, peer in zip(names, peers, strict=True)}
        assert len(set(names)) == 30

        leases = monitor_peer.list_leases()
        granted = [le for le in leases if le.exporter]
        assert len(leases) == 30 and len(granted) == 5
        assert {short(le.exporter) for le in granted} == {f"e{i}" for i in range(5)}

        served: Counter[str] = Counter()
        done: set[str] = set()
        while len(done) < 30:
            expected = min(5, 30 - len(done))

            def next_round(expected: int = expected) -> list[client_pb2.Lease] | None:
                active = [le for le in monitor_peer.list_leases() if le.exporter]
                fresh = [le for le in active if short(le.name) not in done]
                return fresh if len(fresh) == len(active) == expected else None

            current = wait_until(next_round, 10, f"{expected} newly granted leases")
            assert len(current) == expected and len({le.exporter for le in current}) == expected
            for le in current:
                served[short(le.exporter)] += 1
                done.add(short(le.name))
            with ThreadPoolExecutor(expected) as pool:
                list(pool.map(lambda le: owner[short(le.name)].delete_lease(le.name), current))
    finally:
        stop.set()
        watcher.join(10)
        for peer in peers:
            peer.close()
        for stub in stubs:
            stub.close()
    assert violations == [], f"two active leases on one exporter: {violations[:3]}"
    assert snapshots > 10
    assert served == Counter({f"e{i}": 6 for i in range(5)})


# -- Listen and Dial -------------------------------------------------------------------------------------


def test_each_dial_yields_exactly_one_listen_response(scope: Scope):
    board = scope.exporter("board", board="l")
    alice = scope.client("alice")
    lease = alice.create_lease("board=l")
    listener = board.listener(lease.name)

    dials = [alice.dial(lease.name) for _ in range(3)]
    assert len({d.router_token for d in dials}) == 3
    assert {d.router_endpoint for d in dials} == {scope.central.router_endpoint}
    received = [listener.next() for _ in dials]
    assert [(r.router_endpoint, stream_of(r.router_token)) for r in received] == [
        (d.router_endpoint, stream_of(d.router_token)) for d in dials
    ]
    marker = alice.dial(lease.name)
    assert stream_of(listener.next().router_token) == stream_of(
        marker.router_token
    )  # nothing extra came before it
    assert listener.drain() == []


def test_the_newest_listen_supersedes_the_older_one(scope: Scope):
    board = scope.exporter("board", board="n")
    other = scope.exporter("other", board="n2")
    alice = scope.client("alice")
    lease = alice.create_lease("board=n")
    older = board.listener(lease.name)

    newer = board.listen(lease.name)
    assert older.ended.wait(5), "the older Listen stream was not ended"
    assert older.code == CODE.OK
    dial = alice.dial(lease.name)
    assert stream_of(newer.next().router_token) == stream_of(dial.router_token)
    assert older.drain() == []

    foreign = other.listen(lease.name)  # not its lease
    assert foreign.ended.wait(5) and foreign.code == CODE.PERMISSION_DENIED


def test_dial_waits_until_the_exporter_reports_lease_ready(scope: Scope):
    board = scope.exporter("board", auto=False, board="w")
    alice = scope.client("alice")
    lease = alice.create_lease("board=w")
    board.wait_status(lambda s: s.leased, "leased=true")
    listener = board.listen(lease.name)

    with ThreadPoolExecutor(1) as pool:
        dialing = pool.submit(alice.dial, lease.name)
        with pytest.raises(TimeoutError):
            dialing.result(timeout=DIAL_READY_WAIT / 3)  # still waiting while the exporter is AVAILABLE
        board.report(S.EXPORTER_STATUS_LEASE_READY)
        dial = dialing.result(timeout=DIAL_READY_WAIT)
    assert stream_of(listener.next().router_token) == stream_of(dial.router_token)


def test_dial_fails_not_ready_after_dial_ready_wait(scope: Scope):
    board = scope.exporter("board", auto=False, board="x")
    alice = scope.client("alice")
    lease = alice.create_lease("board=x")
    board.wait_status(lambda s: s.leased, "leased=true")
    listener = board.listen(lease.name)

    started = time.monotonic()
    error = rpc_error(lambda: alice.dial(lease.name))
    waited = time.monotonic() - started
    assert error.code() == CODE.FAILED_PRECONDITION and "not ready" in error.details(), error.details()
    assert DIAL_READY_WAIT - 0.05 <= waited < DIAL_READY_WAIT + 1.0, f"gave up after {waited:.2f}s"

    board.report(S.EXPORTER_STATUS_LEASE_READY)
    dial = alice.dial(lease.name)
    assert stream_of(listener.next().router_token) == stream_of(
        dial.router_token
    )  # the failed Dial pushed nothing
    assert listener.drain() == []


@pytest.fixture(scope="module")
def patient() -> Iterator[Central]:
    """A pair whose Dial waits long for readiness: what changes meanwhile is seen, not timed out."""
    c = start_central(prefix="jsc-patient-", offline_after=OFFLINE_AFTER, dial_ready_wait=30.0)
    try:
        yield c
    finally:
        close_central(c)


@pytest.mark.parametrize("change", ["transfer", "end"])
def test_a_waiting_dial_rereads_its_lease(patient: Central, change: str):
    """A lease transferred to bob (or ended) while alice's Dial waits for readiness gets alice no token."""
    scope = Scope(patient, f"waiting-dial-{change}")
    try:
        board = scope.exporter("board", auto=False, board="wd")
        alice, bob = scope.client("alice"), scope.client("bob")
        lease = alice.create_lease("board=wd")
        board.wait_status(lambda s: s.leased, "leased=true")
        listener = board.listen(lease.name)
        with ThreadPoolExecutor(1) as pool:
            dialing = pool.submit(lambda: rpc_error(lambda: alice.dial(lease.name, timeout=40)))
            with pytest.raises(TimeoutError):
                dialing.result(timeout=1.0)  # waiting: the exporter is AVAILABLE, not LEASE_READY
            if change == "transfer":
                alice.update_lease(
                    client_pb2.Lease(name=lease.name, client=bob.identity.resource), ["client"]
                )
            else:
                alice.delete_lease(lease.name)
            board.report(S.EXPORTER_STATUS_LEASE_READY)  # ready now: the old Dial handed alice a token
            error = dialing.result(timeout=35)
        expected = CODE.PERMISSION_DENIED if change == "transfer" else CODE.FAILED_PRECONDITION
        assert error.code() == expected, error.details()
        assert listener.drain() == []  # nothing was pushed to the exporter for alice
    finally:
        scope.close()


def test_a_new_status_stream_first_ends_the_lease_a_closed_one_announced(scope: Scope):
    board = scope.exporter("board", board="ann")
    alice, bob = scope.client("alice"), scope.client("bob")
    first = alice.create_lease("board=ann")
    board.wait_status(lambda s: s.lease_name == short(first.name), "alice's lease")
    board.close_status()
    told = len(board.statuses)
    second = bob.create_lease("board=ann")
    alice.delete_lease(first.name)

    def granted() -> bool:
        board.report(S.EXPORTER_STATUS_AVAILABLE)  # cleaned up, and heard from: grantable again
        return is_true(bob.get_lease(second.name), "Ready")

    wait_until(granted, 15, "bob's lease granted while no Status stream is open")
    board.open_status()
    wait_until(lambda: len(board.statuses) >= told + 2, 10, "the new stream's messages")
    seen = [(s.leased, s.lease_name) for s in board.statuses[told:]]
    assert seen == [(False, ""), (True, short(second.name))], seen


# -- health and metrics -------------------------------------------------------------------------------------


def test_health_service_answers_serving(central: Central):
    with central.channel() as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_count_granted_leases(scope: Scope):
    granted = 'jumpstarter_leases_total{event="granted"}'
    waits = "jumpstarter_lease_wait_seconds_count"
    before, waits_before = scope.central.metric(granted), scope.central.metric(waits)
    scope.exporter("one", board="g")
    scope.exporter("two", board="g")
    alice = scope.client("alice")
    leases = [alice.create_lease("board=g") for _ in range(3)]
    assert [is_true(le, "Ready") for le in leases] == [True, True, False]

    assert scope.central.metric(granted) == before + 2
    alice.delete_lease(leases[0].name)
    alice.wait_ready(leases[2].name)
    assert scope.central.metric(granted) == before + 3
    assert scope.central.metric(waits) == waits_before + 3
