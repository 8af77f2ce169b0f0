"""Bad input and policy bypasses against a real controllerd: refused with a clear status, nothing stored.

Each test performs the attack through the real daemon (raw ClientService/ControllerService
calls, the admin socket, the `jumpstarter admin` CLI) and then checks the store through the
same public calls: ListLeases still answers, no lease or record appeared, the exporter is free.
"""

from __future__ import annotations

import re
import subprocess
import time
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from jumpstarter.client.v1 import client_pb2
from jumpstarter.v1 import jumpstarter_pb2, kubernetes_pb2

from .central import (
    CLI,
    ROOT,
    Central,
    Peer,
    Scope,
    StubExporter,
    close_central,
    condition,
    is_true,
    refused,
    start_central,
)

CODE = grpc.StatusCode
MAX_LEASE = 3600.0  # this controllerd's max_lease_duration
YEAR_9999 = 253402300799

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(offline_after=2.0, dial_ready_wait=1.5, max_lease_duration=MAX_LEASE)
    try:
        yield c
    finally:
        close_central(c)


@pytest.fixture
def scope(central: Central, request: pytest.FixtureRequest) -> Iterator[Scope]:
    name = request.node.name.removeprefix("test_")
    base = re.sub("[^a-z0-9]+", "-", name.lower())[:30].strip("-")
    namespace = f"{base}-{zlib.crc32(name.encode()):08x}"  # parametrized cases share a prefix
    s = Scope(central, namespace)
    try:
        yield s
    finally:
        s.close()


def create(peer: Peer, **fields: Any) -> client_pb2.Lease:
    return peer.clients.CreateLease(
        client_pb2.CreateLeaseRequest(parent=peer.parent, lease=client_pb2.Lease(**fields)),
        metadata=peer.md,
        timeout=10,
    )


def assert_nothing_stored_and_board_free(peer: Peer, selector: str) -> None:
    """ListLeases answers, holds no lease at all, and a fresh lease gets the board at once."""
    assert peer.list_leases(only_active=False) == []
    lease = peer.create_lease(selector, duration=60)
    assert is_true(lease, "Ready"), lease
    peer.delete_lease(lease.name)


def ts(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds))


# -- lease requests ---------------------------------------------------------------------------------------


def test_a_huge_duration_is_refused_and_stores_nothing(scope: Scope):
    scope.exporter("board", board="h")
    alice = scope.client("alice")

    error = refused(
        lambda: create(alice, selector="board=h", duration=Duration(seconds=2**63 - 1)),
        CODE.INVALID_ARGUMENT,
        "",
    )
    assert_nothing_stored_and_board_free(alice, "board=h")  # before: a stored lease broke ListLeases
    assert "duration" in (error.details() or "") and "maximum" in (error.details() or ""), error.details()


def test_the_legacy_request_lease_goes_through_the_same_checks(scope: Scope):
    scope.exporter("board", board="leg")
    alice = scope.client("alice")

    def request(labels: dict[str, str], seconds: int) -> Any:
        return alice.controller.RequestLease(
            jumpstarter_pb2.RequestLeaseRequest(
                duration=Duration(seconds=seconds),
                selector=kubernetes_pb2.LabelSelector(match_labels=labels),
            ),
            metadata=alice.md,
            timeout=10,
        )

    refused(lambda: request({"board": "leg"}, 2**63 - 1), CODE.INVALID_ARGUMENT, "duration")
    refused(lambda: request({"board": "leg"}, int(MAX_LEASE) + 1), CODE.INVALID_ARGUMENT, "maximum")
    refused(lambda: request({"board": "leg,x=y"}, 60), CODE.INVALID_ARGUMENT, "label value")
    assert_nothing_stored_and_board_free(alice, "board=leg")


CONTROL_CHARACTERS = {
    "newline in a tag value": {"tags": {"team": "a\nb"}},
    "escape in a tag value": {"tags": {"team": "\x1b[31m"}},
    "NUL in a context value": {"context": {"job": "x\x00y"}},
    "escape sequence in a context value": {"context": {"job": "\x1b]0;owned\x07"}},
    "newline in a context key": {"context": {"job\nid": "1"}},
    "carriage return in a context value": {"context": {"url": "a\rb"}},
}


@pytest.mark.parametrize("case", list(CONTROL_CHARACTERS))
def test_control_characters_in_tags_and_context_are_refused(scope: Scope, case: str):
    scope.exporter("board", board="c")
    alice = scope.client("alice")

    error = refused(
        lambda: create(alice, selector="board=c", duration=Duration(seconds=60), **CONTROL_CHARACTERS[case]),
        CODE.INVALID_ARGUMENT,
        "tag" if "tag" in case else "context",
    )
    assert "\x1b" not in (error.details() or "") and "\x00" not in (error.details() or "")
    assert_nothing_stored_and_board_free(alice, "board=c")


def test_absurd_begin_and_end_times_are_refused(scope: Scope):
    scope.exporter("board", board="t")
    alice = scope.client("alice")
    now = time.time()
    minute = Duration(seconds=60)

    absurd = {
        "begin in the year 9999": dict(begin_time=ts(YEAR_9999), duration=minute),
        "begin two years ahead": dict(begin_time=ts(now + 2 * 365 * 86400), duration=minute),
        "end in 1970": dict(end_time=ts(1), duration=minute),
        "end an hour ago": dict(end_time=ts(now - 3600), duration=minute),
        "begin long ago, end soon": dict(begin_time=ts(1), end_time=ts(now + 600)),
        "begin and end in the year 9999": dict(begin_time=ts(YEAR_9999 - 60), end_time=ts(YEAR_9999)),
        "begin before 1970": dict(begin_time=ts(-86400), duration=minute),
    }
    for what, fields in absurd.items():
        error = refused(
            lambda fields=fields: create(alice, selector="board=t", **fields), CODE.INVALID_ARGUMENT, ""
        )
        assert any(w in (error.details() or "") for w in ("begin_time", "end_time", "maximum", "past")), (
            what,
            error.details(),
        )
    assert_nothing_stored_and_board_free(alice, "board=t")

    scheduled = create(alice, selector="board=t", begin_time=ts(now + 86400), duration=minute)
    assert condition(scheduled, "Pending").reason == "Scheduled"  # a sane future start is still fine


def test_the_maximum_lease_duration_applies_without_any_policy(scope: Scope):
    scope.exporter("board", board="m")
    alice = scope.client("alice")

    refused(lambda: alice.create_lease("board=m", duration=MAX_LEASE + 1), CODE.INVALID_ARGUMENT, "maximum")
    refused(
        lambda: create(alice, selector="board=m", end_time=ts(time.time() + MAX_LEASE + 600)),
        CODE.INVALID_ARGUMENT,
        "",
    )
    assert alice.list_leases(only_active=False) == []

    lease = alice.create_lease("board=m", duration=MAX_LEASE)
    assert is_true(lease, "Ready")
    longer = client_pb2.Lease(name=lease.name, end_time=ts(time.time() + 2 * MAX_LEASE))
    refused(lambda: alice.update_lease(longer, ["end_time"]), CODE.INVALID_ARGUMENT, "maximum")
    huge = client_pb2.Lease(name=lease.name, duration=Duration(seconds=2**63 - 1))
    refused(lambda: alice.update_lease(huge, ["duration"]), CODE.INVALID_ARGUMENT, "maximum")
    kept = alice.get_lease(lease.name)
    assert kept.duration.seconds == int(MAX_LEASE) and not kept.HasField("end_time")
    assert [le.name for le in alice.list_leases()] == [lease.name]


# -- UpdateLease re-checks policies ----------------------------------------------------------------------


def test_update_cannot_extend_a_lease_past_the_policy_maximum(scope: Scope):
    scope.central.admin(scope.ns, "policy", "set", "short", "--clients", "team=a", "--max-duration", "1m")
    scope.exporter("board", board="p")
    alice = scope.client("alice", team="a")
    lease = alice.create_lease("board=p", duration=30)
    assert is_true(lease, "Ready")

    longer = client_pb2.Lease(name=lease.name, duration=Duration(seconds=120))
    refused(lambda: alice.update_lease(longer, ["duration"]), CODE.PERMISSION_DENIED, "policy")
    later = client_pb2.Lease(name=lease.name, end_time=ts(time.time() + 1800))
    refused(lambda: alice.update_lease(later, ["end_time"]), CODE.PERMISSION_DENIED, "policy")
    kept = alice.get_lease(lease.name)
    assert kept.duration.seconds == 30 and not kept.HasField("end_time") and is_true(kept, "Ready")

    within = alice.update_lease(
        client_pb2.Lease(name=lease.name, duration=Duration(seconds=50)), ["duration"]
    )
    assert within.duration.seconds == 50


def test_a_lease_cannot_be_transferred_to_a_client_the_policy_does_not_approve(scope: Scope):
    scope.central.admin(scope.ns, "policy", "set", "team-a", "--clients", "team=a")
    board = scope.exporter("board", board="x")
    alice, outsider, colleague = (
        scope.client("alice", team="a"),
        scope.client("outsider", team="b"),
        scope.client("colleague", team="a"),
    )
    lease = alice.create_lease("board=x")
    assert is_true(lease, "Ready")

    to_outsider = client_pb2.Lease(name=lease.name, client=outsider.identity.resource)
    refused(lambda: alice.update_lease(to_outsider, ["client"]), CODE.PERMISSION_DENIED, "outsider")
    assert alice.get_lease(lease.name).client == alice.identity.resource
    refused(lambda: outsider.dial(lease.name), CODE.PERMISSION_DENIED, "permission denied")

    moved = alice.update_lease(
        client_pb2.Lease(name=lease.name, client=colleague.identity.resource), ["client"]
    )
    assert moved.client == colleague.identity.resource
    board.wait_status(lambda s: s.client_name == "colleague", "the exporter told of the approved owner")


# -- reserved labels at Register -------------------------------------------------------------------------


def test_an_exporter_cannot_claim_another_exporters_name_label(scope: Scope):
    identity = scope.central.create("exporter", scope.ns, "evil", role="x")
    evil = StubExporter(scope.central, identity)
    scope.closers.append(evil.close)
    alice = scope.client("alice")

    for label in ({"jumpstarter.dev/name": "board1"}, {"jumpstarter.dev/client": "x"}):
        error = refused(
            lambda label=label: evil.stub.Register(
                jumpstarter_pb2.RegisterRequest(labels=label), metadata=evil.md, timeout=10
            ),
            CODE.INVALID_ARGUMENT,
            next(iter(label)),
        )
        assert "reserved" in (error.details() or "")
    evil.start()  # its own name (what our exporterd and upstream exporters send) still registers
    exporter = alice.get_exporter("evil")
    assert exporter.labels["jumpstarter.dev/name"] == "evil" and exporter.online

    stolen = alice.create_lease("jumpstarter.dev/name=board1")
    assert not stolen.HasField("exporter")
    assert condition(stolen, "Unsatisfiable").reason == "ExporterNotFound"
    own = alice.create_lease("jumpstarter.dev/name=evil")  # the controller set the label itself
    assert is_true(own, "Ready") and own.exporter.endswith("/exporters/evil")


def test_an_exporter_that_sends_no_labels_gets_its_name_label_from_the_controller(scope: Scope):
    identity = scope.central.create("exporter", scope.ns, "quiet", role="q")
    quiet = StubExporter(scope.central, identity)
    scope.closers.append(quiet.close)
    alice = scope.client("alice")

    quiet.stub.Register(jumpstarter_pb2.RegisterRequest(), metadata=quiet.md, timeout=10)  # as upstream 0.9
    assert dict(alice.get_exporter("quiet").labels) == {"role": "q", "jumpstarter.dev/name": "quiet"}


# -- admin input ------------------------------------------------------------------------------------------

BAD_NAMES = {
    "100,000 characters": "a" * 100_000,
    "empty": "",
    "NUL": "a\x00b",
    "slash": "a/b",
    "colon": "a:b",
    "newline": "a\nb",
    "uppercase": "Alice",
    "leading dash": "-alice",
    "64 characters": "a" * 64,
}


def records(central: Central) -> list[tuple[str, str]]:
    from jumpstarter.cli.admin import call

    rows = call(central.admin_socket, "get", kind="clients") + call(
        central.admin_socket, "get", kind="exporters"
    )
    return sorted((row["namespace"], row["name"]) for row in rows)


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_the_admin_socket_refuses_bad_names_and_stores_nothing(central: Central, case: str):
    from jumpstarter.cli.admin import call
    from jumpstarter.errors import JumpstarterError

    before = records(central)
    bad = BAD_NAMES[case]
    for kind in ("client", "exporter"):
        for namespace, name in (("adm", bad), (bad or "x" * 64, "fine")):
            with pytest.raises(JumpstarterError) as info:
                call(central.admin_socket, f"create_{kind}", namespace=namespace, name=name)
            message = str(info.value)
            assert "invalid" in message and "lowercase letters, digits and '-'" in message, message
            assert len(message) < 400  # a 100,000-character name is not echoed back whole
    assert records(central) == before


BAD_LABELS = {
    "reserved name label": "jumpstarter.dev/name=board1",
    "reserved subdomain": "x.jumpstarter.dev/y=z",
    "space in the key": "my key=v",
    "newline in the value": "k=v\nw",
    "value too long": "k=" + "v" * 64,
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_the_admin_socket_refuses_bad_labels_and_stores_nothing(central: Central, case: str):
    from jumpstarter.cli.admin import call
    from jumpstarter.errors import JumpstarterError

    before = records(central)
    key, _, value = BAD_LABELS[case].partition("=")
    name = f"labelled-{list(BAD_LABELS).index(case)}"
    with pytest.raises(JumpstarterError) as info:
        call(central.admin_socket, "create_exporter", namespace="adm", name=name, labels={key: value})
    assert "invalid label" in str(info.value) or "is reserved" in str(info.value), info.value
    assert records(central) == before


def admin_cli(central: Central, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "admin", "--admin-socket", central.admin_socket, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "adm", "create", "client", "a" * 100_000],
        ["-n", "adm", "create", "client", ""],
        ["-n", "adm", "create", "exporter", "a/b"],
        ["-n", "adm", "create", "exporter", "a:b"],
        ["-n", "adm", "create", "client", "a\nb"],
        ["-n", "Bad_NS", "create", "client", "alice"],
        ["-n", "adm", "create", "exporter", "board", "-l", "jumpstarter.dev/name=board1"],
        ["-n", "adm", "create", "exporter", "board", "-l", "k=v w"],
    ],
    ids=["long", "empty", "slash", "colon", "newline", "namespace", "reserved-label", "bad-label"],
)
def test_admin_create_cli_refuses_bad_input_with_a_clear_error(central: Central, args: list[str]):
    before = records(central)
    result = admin_cli(central, *args)
    assert result.returncode == 2, result
    assert result.stderr.startswith("jumpstarter: error: invalid") or "reserved" in result.stderr, (
        result.stderr
    )
    assert len(result.stderr) < 400 and "Traceback" not in result.stderr
    assert records(central) == before
