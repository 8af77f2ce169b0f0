"""controllerd's state directory on a tiny tmpfs that fills up while it runs.

The test runs as root (this machine's test runs do) and mounts `tmpfs -o size=2m` on the
state directory before controllerd starts; the mount is removed in a `finally`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator

import grpc
import pytest

from controllerd.scheduler import MAX_TICK
from tests.integration.central import (
    CLI,
    Central,
    S,
    StubExporter,
    close_central,
    condition,
    is_true,
    short,
    wait_until,
)

from .conftest import LightExporter

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tiny_state() -> Iterator[Central]:
    """A Central whose state directory is a 2 MiB tmpfs (controllerd not started yet)."""
    central = Central(tempfile.mkdtemp(prefix="jsfd-", dir="/tmp"), {"offline_after": 5.0})
    os.makedirs(central.state, mode=0o700)
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", central.state]
    mounted = subprocess.run(mount, capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        close_central(central)
        raise AssertionError(f"{' '.join(mount)} failed (needs root): {mounted.stderr}")
    try:
        yield central
    finally:
        central.close()
        subprocess.run(["umount", central.state], check=True, capture_output=True, timeout=30)
        close_central(central)


def fill(directory: str) -> str:
    """Write a file in `directory` until the filesystem has no free block left; returns its path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while os.write(fd, chunk) > 0:
                    pass
        with pytest.raises(OSError) as full:
            os.write(fd, b"\0" * 4096)
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path


def stored_names(central: Central) -> set[str]:
    db = sqlite3.connect(f"file:{central.state}/controller.db?mode=ro", uri=True, timeout=10)
    try:
        return {row[0] for row in db.execute("SELECT name FROM leases")}
    finally:
        db.close()


def test_a_full_state_disk_refuses_writes_clearly_keeps_serving_and_recovers(tiny_state: Central):
    central = tiny_state
    central.start_controller()
    alice = central.peer(central.create("client", "full", "alice"))
    board = LightExporter(central, central.create("exporter", "full", "board", board="f")).start()
    try:
        wait_until(lambda: alice.get_exporter("board").online, 20, "the exporter online")
        short_lease = alice.create_lease("board=f", duration=4.0)  # it ends while the disk is full
        assert is_true(short_lease, "Ready"), short_lease
        wait_until(  # its answer to the grant is written before the disk fills
            lambda: alice.get_exporter("board").status == S.EXPORTER_STATUS_LEASE_READY, 20, "LEASE_READY"
        )
        before = alice.list_leases(only_active=False)

        filler = fill(central.state)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                alice.create_lease("board=f", duration=60, lease_id="while-full")
            code, details = refused.value.code(), refused.value.details() or ""
            assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE), (code, details)
            assert "disk full" in details.lower() or "no space" in details.lower(), details
            assert central.state in details, details
            print(f"CreateLease on a full disk: {code.name}: {details}")
            assert "while-full" not in stored_names(central)  # nothing half-stored

            # reads go on, from the same daemon
            assert central.controller is not None and central.controller.poll() is None
            with pytest.raises(grpc.RpcError) as missing:
                alice.get_lease("while-full")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert [le.name for le in alice.list_leases(only_active=False)] == [le.name for le in before]
            assert alice.get_exporter("board").online
            admin = subprocess.run(  # the admin socket's writes say it too
                [
                    *CLI,
                    "admin",
                    "--admin-socket",
                    central.admin_socket,
                    "-n",
                    "full",
                    "create",
                    "client",
                    "bob",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert admin.returncode != 0 and "disk full" in admin.stderr and central.state in admin.stderr, (
                admin
            )
            # the short lease reaches its end meanwhile: the scheduler cannot store that yet
            wait_until(
                lambda: "scheduler pass not stored" in central.log("controllerd"),
                4.0 + MAX_TICK + 10,
                "the scheduler to fail to store the short lease's end",
                interval=0.2,
            )
            assert is_true(alice.get_lease(short_lease.name), "Ready")
        finally:
            os.unlink(filler)

        # space is back: the scheduler records the expiry by itself (no write from us)...
        ended = alice.wait_lease(
            short_lease.name,
            lambda le: condition(le, "Ready").status == "False",
            "the short lease to end after space came back",
            timeout=MAX_TICK + 15,
        )
        assert condition(ended, "Ready").reason == "Expired", ended
        # ...and writes work again
        again = alice.create_lease("board=f", duration=60, lease_id="while-full")
        got = alice.wait_ready(again.name, timeout=20)
        assert short(got.exporter) == "board"
        assert central.controller.poll() is None
        log = central.log("controllerd")
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    finally:
        board.close()
        alice.close()


def test_a_lease_request_on_a_nearly_full_disk_is_stored_whole_or_not_at_all(tiny_state: Central):
    """Room comes back one page at a time: each CreateLease either fails leaving nothing behind, or
    succeeds and is stored whole (with its audit record); a stored lease is granted, at once or by
    the scheduler's retry as soon as its pass can be written. Never stored while the client is told no."""
    central = tiny_state
    central.start_controller()
    alice = central.peer(central.create("client", "room", "alice"))
    board = StubExporter(central, central.create("exporter", "room", "board"), auto=False).start()
    try:
        wait_until(lambda: alice.get_exporter("board").online, 20, "the exporter online")
        filler = fill(central.state)
        size = os.path.getsize(filler)
        refusals = 0
        for step in range(1, 200):
            os.truncate(filler, max(0, size - step * 4096))
            try:
                lease = alice.create_lease(exporter_name="board", duration=60, lease_id=f"step-{step}")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.code(), exc.details())
                assert f"step-{step}" not in stored_names(central), f"step {step}: half-stored"
                refusals += 1
                continue
            assert f"step-{step}" in stored_names(central), f"step {step}: told stored, not stored"
            if not is_true(lease, "Ready"):  # its grant could not be written yet: the scheduler retries
                os.truncate(filler, 0)
                lease = alice.wait_ready(lease.name, 30)
            assert short(lease.exporter) == "board", lease
            break
        else:
            raise AssertionError("CreateLease never succeeded with 800 KiB back")
        assert refusals > 0, "the disk was not full at the first step"
        assert stored_names(central) == {f"step-{step}"}
        print(f"nearly full disk: {refusals} refused CreateLease calls, then stored whole")
    finally:
        board.close()
        alice.close()
