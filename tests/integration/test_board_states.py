"""Board states through real controllerd + routerd (issue 12 §1): maintenance, admin leases, audit.

Boards are StubExporters (raw ControllerService calls), clients are raw ClientService peers, and
every state change is made and read with the real CLI (`jumpstarter admin exporter maintenance`,
`jumpstarter admin audit`, `jumpstarter get exporters`).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from .central import (
    CLI,
    ROOT,
    Central,
    Peer,
    Scope,
    close_central,
    condition,
    is_true,
    short,
    start_central,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(prefix="jsb-")
    try:
        yield c
    finally:
        close_central(c)


class Lab(Scope):
    """One namespace of `central`: its clients and boards, closed after the test."""

    board = Scope.exporter

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`jumpstarter admin -n NS ARGS…` whatever its exit status."""
        return subprocess.run(
            [*CLI, "admin", "--admin-socket", self.central.admin_socket, "-n", self.ns, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    def audit(self, exporter: str, by: str = "--exporter") -> list[dict[str, Any]]:
        out = self.central.admin(self.ns, "audit", by, exporter, "-o", "json")
        return json.loads(out)  # type: ignore[no-any-return]

    def exporter_row(self, name: str) -> dict[str, Any]:
        rows = json.loads(self.central.admin(self.ns, "get", "exporters", "-o", "json"))
        return next(r for r in rows if r["name"] == name)  # type: ignore[no-any-return]

    def get_exporters(self, peer: Peer) -> str:
        """`jumpstarter get exporters` as `peer`'s client config sees them (the table)."""
        assert peer.identity.config
        env = {**os.environ, "JMP_CLIENT_CONFIG": peer.identity.config}
        result = subprocess.run(
            [*CLI, "get", "exporters"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def lab(central: Central, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(central, request.node.name.removeprefix("test_")[:40].replace("_", "-").strip("-"))
    try:
        yield lab
    finally:
        lab.close()


def pending_message(peer: Peer, lease: str, text: str) -> Any:
    """Wait until `lease` is pending with `text` in its Pending condition's message."""

    def says() -> bool:
        le = peer.get_lease(lease)
        pending = condition(le, "Pending")
        return pending is not None and text in pending.message and not is_true(le, "Ready")

    return peer.wait_lease(lease, lambda le: says(), f"pending, saying {text!r}", timeout=20)


def test_board_in_maintenance_is_not_granted_and_the_waiting_lease_says_why(lab: Lab) -> None:
    alice = lab.client("alice")
    lab.board("rig-1", board="rig")
    out = lab.admin("exporter", "maintenance", "rig-1", "--reason", "replacing the SD card")
    assert out.returncode == 0, out.stderr
    assert "maintenance" in out.stdout and "replacing the SD card" in out.stdout

    lease = alice.create_lease("board=rig", 60).name
    waiting = pending_message(alice, lease, "out of service")
    message = condition(waiting, "Pending").message
    assert "rig-1 in maintenance (replacing the SD card)" in message, message
    assert lab.exporter_row("rig-1")["health"] == "maintenance"
    table = lab.get_exporters(alice)
    row = next(line for line in table.splitlines() if line.startswith("rig-1"))
    assert "maintenance: replacing the SD card" in row, table
    assert "jumpstarter.dev/health" not in table  # shown as STATE, not as a label

    done = lab.admin("exporter", "maintenance", "rig-1", "--done")
    assert done.returncode == 0, done.stderr
    granted = alice.wait_ready(lease, timeout=20)
    assert short(granted.exporter) == "rig-1"
    alice.delete_lease(lease)

    actions = [(e["action"], e["actor"], e["message"]) for e in lab.audit("rig-1")]
    assert ("maintenance", "admin", "unknown → maintenance: replacing the SD card") in actions, actions
    assert ("in-service", "admin", "maintenance → unknown") in actions, actions


def test_maintenance_input_is_validated_and_nothing_is_stored(lab: Lab) -> None:
    lab.board("rig-2", board="rig")
    before = lab.audit("rig-2")
    too_long = lab.admin("exporter", "maintenance", "rig-2", "--reason", "x" * 201)
    assert too_long.returncode != 0 and "reason too long: 201 characters, at most 200" in too_long.stderr
    control = lab.admin("exporter", "maintenance", "rig-2", "--reason", "line one\nline two")
    assert control.returncode != 0 and "printable characters only" in control.stderr
    blank = lab.admin("exporter", "maintenance", "rig-2", "--reason", "   ")
    assert blank.returncode != 0 and "needs --reason" in blank.stderr
    neither = lab.admin("exporter", "maintenance", "rig-2")
    assert neither.returncode != 0 and "give --reason TEXT" in neither.stderr
    unknown = lab.admin("exporter", "maintenance", "no-such-rig", "--reason", "broken")
    assert unknown.returncode != 0 and "no-such-rig not found" in unknown.stderr
    not_in = lab.admin("exporter", "maintenance", "rig-2", "--done")
    assert not_in.returncode != 0 and "is not in maintenance" in not_in.stderr
    row = lab.exporter_row("rig-2")
    assert (row["health"], row["health_reason"]) == ("unknown", "")
    assert lab.audit("rig-2") == before


def test_admin_lease_gets_a_board_in_maintenance_ahead_of_the_queue(lab: Lab) -> None:
    alice, admin_client = lab.client("alice"), lab.client("ops")
    lab.board("rig-3", board="rig")
    assert lab.admin("exporter", "maintenance", "rig-3", "--reason", "flaky USB hub").returncode == 0
    ordinary = alice.create_lease("board=rig", 60).name
    pending_message(alice, ordinary, "flaky USB hub")
    # the same client asking for the board by name is still an ordinary lease
    pinned = admin_client.create_lease(exporter_name="rig-3", duration=60).name
    pending_message(admin_client, pinned, "rig-3 in maintenance (flaky USB hub)")

    made = lab.admin("lease", "create", "--client", "ops", "--exporter", "rig-3", "--duration", "1m")
    assert made.returncode == 0, made.stderr
    name = made.stdout.split()[0]
    granted = admin_client.wait_ready(name, timeout=20)
    assert short(granted.exporter) == "rig-3"
    assert not is_true(alice.get_lease(ordinary), "Ready")
    admin_client.delete_lease(name)
    admin_client.delete_lease(pinned)
    alice.delete_lease(ordinary)
    created = [e for e in lab.audit(name, by="--lease") if e["action"] == "created"]
    assert created and created[0]["actor"] == "admin"
