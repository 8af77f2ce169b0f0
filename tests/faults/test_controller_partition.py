"""A network partition between a real exporterd and controllerd, made by a stalling TCP proxy.

exporterd reaches controllerd only through a `StallProxy`; `stall()` stops forwarding both
ways while every socket stays open (no FIN, no RST: a silent link), `resume()` heals it.
routerd is reached directly, so a Dial after the partition shows the whole path works again.
"""

from __future__ import annotations

import os
import time
from typing import Any

import grpc
import pytest

from controllerd.liveness import silence_window
from controllerd.scheduler import MAX_TICK
from tests.integration.central import Central, Peer, S, condition, get_report, is_true, refused, wait_until

from .conftest import spawn_exporterd

OFFLINE_AFTER = 2.0
# offline within offline_after of the last answer; a scheduler pass at most MAX_TICK later; slack for load
BOUND = OFFLINE_AFTER + MAX_TICK + 10
CODE = grpc.StatusCode

pytestmark = pytest.mark.timeout(180)


def exporter_is(peer: Peer, name: str, online: bool, status: int | None = None) -> bool:
    exporter = peer.get_exporter(name)
    return exporter.online == online and (status is None or exporter.status == status)


def test_a_partitioned_exporter_goes_offline_pauses_gets_nothing_new_and_recovers(
    centrals: Any, stall_proxy: Any
) -> None:
    central: Central = centrals(prefix="jsfp-", offline_after=OFFLINE_AFTER, dial_ready_wait=5.0)
    proxy = stall_proxy("127.0.0.1", central.cport)
    identity = central.create("exporter", "part", "far", board="far")
    alice = central.peer(central.create("client", "part", "alice"))
    bob = central.peer(central.create("client", "part", "bob"))
    process = spawn_exporterd(central, identity, "far", endpoint=proxy.endpoint)
    try:
        wait_until(
            lambda: exporter_is(alice, "far", True, S.EXPORTER_STATUS_AVAILABLE), 30, "exporterd registered"
        )
        assert proxy.connections >= 1, "exporterd did not go through the proxy"
        lease = alice.create_lease(exporter_name="far", duration=300)
        assert is_true(lease, "Ready")
        wait_until(lambda: exporter_is(alice, "far", True, S.EXPORTER_STATUS_LEASE_READY), 30, "LEASE_READY")
        sock = os.path.join(central.directory, "t{}.sock")
        assert get_report(central, alice.dial(lease.name), sock.format(1)).reports

        # 1. partitioned while leased: offline within the bound, the lease paused, Dial refused
        proxy.stall()
        cut = time.monotonic()
        try:
            paused = alice.wait_lease(lease.name, lambda le: is_true(le, "Paused"), "Paused=True", BOUND)
            took = time.monotonic() - cut
            # not before the controller could have noticed: keepalive needs silence_window to drop the link
            assert took >= OFFLINE_AFTER - silence_window(OFFLINE_AFTER) - 0.1, took
            assert condition(paused, "Paused").reason == "ExporterOffline"
            assert is_true(paused, "Ready") and not paused.HasField("effective_end_time")
            assert not alice.get_exporter("far").online
            error = refused(lambda: alice.dial(lease.name))
            assert error.code() == CODE.FAILED_PRECONDITION and "offline" in error.details(), error.details()
            queued = bob.create_lease(exporter_name="far", duration=60)  # nothing new for it meanwhile
            assert not queued.HasField("exporter"), queued
            assert process.poll() is None, "exporterd died during the partition"
        finally:
            proxy.resume()
        healed = time.monotonic()
        alice.wait_lease(lease.name, lambda le: condition(le, "Paused") is None, "resumed after healing", 60)
        print(
            f"partition: paused after {took:.1f}s (bound {BOUND:g}s), resumed {time.monotonic() - healed:.1f}s after healing"
        )
        wait_until(
            lambda: exporter_is(alice, "far", True, S.EXPORTER_STATUS_LEASE_READY), 60, "LEASE_READY again"
        )
        assert get_report(central, alice.dial(lease.name), sock.format(2)).reports
        assert condition(bob.get_lease(queued.name), "Pending") is not None
        bob.delete_lease(queued.name)

        # 2. partitioned while free: a new request waits (Offline) instead of being granted to it
        alice.delete_lease(lease.name)
        wait_until(lambda: exporter_is(alice, "far", True, S.EXPORTER_STATUS_AVAILABLE), 30, "AVAILABLE")
        proxy.stall()
        try:
            wait_until(lambda: exporter_is(alice, "far", False), BOUND, "the partitioned exporter offline")
            waiting = bob.create_lease(exporter_name="far", duration=60)
            assert condition(waiting, "Pending").reason == "Offline", waiting
            assert not waiting.HasField("exporter")
        finally:
            proxy.resume()
        got = bob.wait_ready(waiting.name, 60)
        assert got.exporter.endswith("/exporters/far")
        wait_until(lambda: exporter_is(bob, "far", True, S.EXPORTER_STATUS_LEASE_READY), 60, "LEASE_READY")
        assert get_report(central, bob.dial(waiting.name), sock.format(3)).reports
        assert proxy.connections >= 3, "exporterd should have reconnected after each partition"
        bob.delete_lease(waiting.name)
    finally:
        alice.close()
        bob.close()
