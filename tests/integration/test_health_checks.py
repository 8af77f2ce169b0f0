"""Health checks through real controllerd, routerd and exporterd (issue 12 §1).

The board's exporter config declares `health: {command, timeout}`; the command drives the board
with the client API (`jumpstarter power on` against the exporter's own socket) and fails while a
file says the board is broken. `jumpstarter admin health run` makes controllerd lease the board
with its own identity and call the check through routerd; the result sets the board's state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jumpstarter.client.remote import ControllerClient, short_name
from jumpstarter.config.client import load_client_config

from .central import CLI, PY, ROOT, Central, close_central, condition, is_true, start_central, wait_until

pytestmark = pytest.mark.timeout(180)
NS = "health"


NOTES = Path(tempfile.mkdtemp(prefix="jsh-notes-", dir="/tmp")) / "changes"
NOTIFY = ["/bin/sh", "-c", f'echo "$JUMPSTARTER_BOARD $JUMPSTARTER_PREVIOUS $JUMPSTARTER_STATE" >> {NOTES}']


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(prefix="jsh-", health_checks={"after_offline": False, "notify": {"command": NOTIFY}})
    try:
        yield c
    finally:
        close_central(c)
        shutil.rmtree(NOTES.parent, ignore_errors=True)


class Board:
    """A real exporterd whose power switch touches a file and whose health check can be broken."""

    def __init__(self, central: Central, name: str, *, check: bool = True) -> None:
        self.central, self.name = central, name
        self.powered = os.path.join(central.directory, f"{name}.powered")
        self.broken = os.path.join(central.directory, f"{name}.broken")
        identity = central.create("exporter", NS, name, board=name)
        if check:
            document = yaml.safe_load(Path(identity.config).read_text())
            document["health"] = {
                "command": f"{PY} -m jumpstarter.cli.main power on && test -e {self.powered}"
                f" && if [ -e {self.broken} ]; then echo 'no login prompt on the console'; exit 1; fi",
                "timeout": 60,
            }
            Path(identity.config).write_text(yaml.safe_dump(document))
        self.config = identity.config
        self.spawn()

    def spawn(self) -> None:
        export = {
            "power": {"type": "power.command", "config": {"on": f"touch {self.powered}", "off": "true"}}
        }
        socket = os.path.join(self.central.directory, f"{self.name}.sock")
        self.central.spawn_exporterd(f"{self.name}-{len(self.central.extra)}", self.config, export, socket)

    def health_run(self) -> subprocess.CompletedProcess[str]:
        return admin(self.central, "health", "run", self.name)


def admin(central: Central, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "admin", "--admin-socket", central.admin_socket, "-n", NS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def exporter_row(central: Central, name: str) -> dict[str, Any]:
    rows = json.loads(central.admin(NS, "get", "exporters", "-o", "json"))
    return next(r for r in rows if r["name"] == name)  # type: ignore[no-any-return]


def wait_available(client: ControllerClient, name: str) -> None:
    def available() -> bool:
        exporters = {short_name(e.name): e for e in client.list_exporters()}
        exporter = exporters.get(name)
        busy = any(short_name(le.exporter) == name for le in client.list_leases() if le.exporter)
        return exporter is not None and exporter.online and exporter.status == 2 and not busy

    wait_until(available, 60, f"exporter {name} online and available")


def test_a_failing_check_takes_the_board_out_of_service_and_a_passing_one_returns_it(
    central: Central,
) -> None:
    board = Board(central, "rig-a")
    alice = central.create("client", NS, "alice")
    client = ControllerClient(load_client_config(alice.config))
    try:
        wait_available(client, "rig-a")
        Path(board.broken).touch()
        failed = board.health_run()
        assert failed.returncode == 1, failed.stderr
        assert "health check FAILED" in failed.stdout and "state unhealthy" in failed.stdout, failed.stdout
        assert "no login prompt on the console" in failed.stdout
        assert os.path.exists(board.powered), "the check did not drive the board through the client API"
        row = exporter_row(central, "rig-a")
        assert row["health"] == "unhealthy" and "exited with 1" in row["health_reason"], row

        wait_available(client, "rig-a")  # the check's own lease is released
        lease = short_name(client.create_lease("board=rig-a", duration=60).name)

        def says_unhealthy() -> bool:
            pending = condition(client.get_lease(lease), "Pending")
            return pending is not None and "rig-a unhealthy (health check failed" in pending.message

        wait_until(says_unhealthy, 30, "the pending lease to say the board is unhealthy")
        assert not is_true(client.get_lease(lease), "Ready")
        env = {**os.environ, "JMP_CLIENT_CONFIG": alice.config}
        table = subprocess.run(
            [*CLI, "get", "exporters"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
        )
        assert "unhealthy: health check failed" in table.stdout, table.stdout

        os.unlink(board.broken)
        os.unlink(board.powered)
        passed = board.health_run()  # goes ahead of alice's waiting lease
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert "health check passed" in passed.stdout and "state healthy" in passed.stdout
        assert os.path.exists(board.powered)
        granted = wait_until(lambda: is_true(client.get_lease(lease), "Ready"), 30, "alice's lease granted")
        assert granted
        client.release(lease)

        told = ["rig-a unknown unhealthy", "rig-a unhealthy healthy"]  # the notification command ran
        wait_until(
            lambda: NOTES.exists() and NOTES.read_text().splitlines() == told, 30, "notifications", 0.2
        )
        events = json.loads(central.admin(NS, "audit", "--exporter", "rig-a", "-o", "json"))
        checks = [e for e in events if e["action"] == "health-check"]
        assert [(e["reason"], e["actor"], e["detail"]["state"]) for e in checks] == [
            ("HealthCheckFailed", "admin", "unhealthy"),
            ("HealthCheckPassed", "admin", "healthy"),
        ], checks
        assert checks[0]["detail"]["ok"] is False and checks[0]["detail"]["duration"] > 0
        assert "no login prompt on the console" in checks[0]["detail"]["output"]
        assert checks[0]["detail"]["trigger"] == "on demand"
        check_leases = {e["detail"]["lease"] for e in checks}
        for name in check_leases:  # each check used a lease of its own identity, then released it
            lease_events = json.loads(central.admin(NS, "audit", "--lease", name, "-o", "json"))
            assert {e["client"] for e in lease_events} == {"jumpstarter-health"}
            assert "released" in {e["action"] for e in lease_events}
    finally:
        client.close()


def test_health_run_refuses_unknown_boards_and_boards_without_a_check(central: Central) -> None:
    Board(central, "rig-b", check=False)
    alice = central.create("client", NS, "bob")
    client = ControllerClient(load_client_config(alice.config))
    try:
        wait_available(client, "rig-b")
        before = json.loads(central.admin(NS, "audit", "--exporter", "rig-b", "-o", "json"))
        none = admin(central, "health", "run", "rig-b")
        assert none.returncode != 0 and "declares no health check" in none.stderr, none.stderr
        unknown = admin(central, "health", "run", "no-such-rig")
        assert unknown.returncode != 0 and "no-such-rig not found" in unknown.stderr, unknown.stderr
        assert exporter_row(central, "rig-b")["health"] == "unknown"
        assert json.loads(central.admin(NS, "audit", "--exporter", "rig-b", "-o", "json")) == before
    finally:
        client.close()


def test_nobody_can_be_given_the_health_checkers_client_identity(central: Central) -> None:
    # its holder could dial, or release, the checker's leases on out-of-service boards
    before = central.admin(NS, "get", "clients", "-o", "json")  # the checker's own may exist already
    taken = admin(central, "create", "client", "jumpstarter-health")
    assert taken.returncode != 0 and "reserved for the controller's health checks" in taken.stderr, (
        taken.stderr
    )
    assert central.admin(NS, "get", "clients", "-o", "json") == before


def checks_of(central: Central, name: str) -> list[dict[str, Any]]:
    events = json.loads(central.admin(NS, "audit", "--exporter", name, "-o", "json"))
    return [e for e in events if e["action"] == "health-check"]


def test_checks_run_by_themselves_after_every_n_leases_and_when_a_board_is_back_online() -> None:
    central = start_central(prefix="jst-", offline_after=2.0, health_checks={"every_leases": 2})
    try:
        board = Board(central, "rig-c")
        alice = central.create("client", NS, "carol")
        client = ControllerClient(load_client_config(alice.config))
        try:
            wait_available(client, "rig-c")
            Path(board.broken).touch()
            for round_ in range(2):
                lease = short_name(client.create_lease("board=rig-c", duration=60).name)
                wait_until(lambda: is_true(client.get_lease(lease), "Ready"), 30, f"lease {round_} granted")
                assert not checks_of(central, "rig-c"), "checked before the second lease"
                client.release(lease)
                wait_available(client, "rig-c")
            failed = wait_until(lambda: checks_of(central, "rig-c"), 60, "a check after 2 leases", 0.5)
            assert failed[0]["actor"] == "health" and failed[0]["detail"]["trigger"] == "after 2 leases"
            assert exporter_row(central, "rig-c")["health"] == "unhealthy"

            os.unlink(board.broken)
            exporterd = central.extra[-1]
            exporterd.kill()  # no goodbye: the controller finds it silent
            exporterd.wait()
            wait_until(
                lambda: offline_recorded(central, "rig-c"), 30, "the controller to record the board offline"
            )
            board.spawn()
            passed = wait_until(lambda: checks_of(central, "rig-c")[1:], 60, "a check once back online", 0.5)
            assert passed[0]["detail"]["trigger"] == "back online" and passed[0]["detail"]["ok"] is True
            assert exporter_row(central, "rig-c")["health"] == "healthy"
        finally:
            client.close()
    finally:
        close_central(central)


def offline_recorded(central: Central, name: str) -> bool:
    events = json.loads(central.admin(NS, "audit", "--exporter", name, "-o", "json"))
    return any(e["action"] == "offline" for e in events)


def test_checks_run_on_a_schedule() -> None:
    central = start_central(prefix="jsi-", health_checks={"interval": 1, "after_offline": False})
    try:
        Board(central, "rig-d")
        scheduled = wait_until(lambda: checks_of(central, "rig-d"), 60, "a scheduled check", 0.5)
        assert scheduled[0]["actor"] == "health" and scheduled[0]["detail"]["trigger"] == "scheduled"
        assert scheduled[0]["detail"]["ok"] is True
        assert exporter_row(central, "rig-d")["health"] == "healthy"
    finally:
        close_central(central)
