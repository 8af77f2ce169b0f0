"""Lease requests that arrive together share scheduler passes (found by tests/bench/bench_load.py).

Each CreateLease/DeleteLease/UpdateLease used to run its own full pass over every exporter and
active lease: 200 clients against 500 exporters saturated controllerd at ~23 leases/s with a
4 s median grant latency for free exporters. Now a request stores its change, lets the requests
that are already there store theirs, and one pass plans them all.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from jumpstarter.client.v1 import client_pb2

from .central import Central, StubExporter, close_central, condition, is_true, seconds, start_central

BURST = 60
LIMIT = 3
PASSES = "jumpstarter_scheduler_passes"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def central() -> Iterator[Central]:
    c = start_central(router=False, max_pending_leases=LIMIT)
    try:
        yield c
    finally:
        close_central(c)


def burst(central: Central, namespace: str, clients: list[str], each: int) -> list[grpc.Future]:
    """`each` CreateLease(board=q) from every client in `clients`, all sent at once; their futures."""
    peers = [central.peer(i) for i in central.create_many("client", namespace, clients)]
    spec = client_pb2.Lease(selector="board=q")
    spec.duration.CopyFrom(seconds(600))
    return [
        peer.clients.CreateLease.future(
            client_pb2.CreateLeaseRequest(parent=peer.parent, lease=spec), metadata=peer.md, timeout=60
        )
        for _ in range(each)
        for peer in peers
    ]


def test_a_burst_of_lease_requests_shares_scheduler_passes(central: Central):
    central.create_many("exporter", "burst", ["board"], board="q")  # offline: every lease stays pending
    before = central.metric(PASSES)
    assert before >= 1, "controllerd exposes its scheduler passes"
    clients = [f"c{i}" for i in range(BURST // LIMIT)]  # LIMIT pending leases per client
    leases = [f.result() for f in burst(central, "burst", clients, LIMIT)]
    assert all(condition(le, "Pending").status == "True" for le in leases)
    passes = central.metric(PASSES) - before
    # one pass per request would be BURST (plus the background loop's); sharing makes it fewer
    assert passes < BURST, f"{passes:g} scheduler passes for {BURST} lease requests"


def test_a_burst_that_free_exporters_can_grant_is_not_refused_by_the_pending_quota(central: Central):
    """A pending lease whose request is not planned yet is granted by the pass: it must not count."""
    count = LIMIT + 3
    exporters = [
        StubExporter(central, e).start()
        for e in central.create_many("exporter", "free", [f"e{i}" for i in range(count)], board="q")
    ]
    try:
        leases = [f.result() for f in burst(central, "free", ["alice"], count)]
    except grpc.RpcError as exc:
        raise AssertionError(f"a grantable request was refused: {exc.code().name}: {exc.details()}") from None
    finally:
        for exporter in exporters:
            exporter.close()
    assert all(is_true(le, "Ready") for le in leases), [le.conditions for le in leases]
    assert len({le.exporter for le in leases}) == count
