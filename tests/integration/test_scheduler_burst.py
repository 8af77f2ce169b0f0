"""Lease requests that arrive together share scheduler passes (found by tests/bench/bench_load.py).

A request now stores its change, lets the requests that are already there store theirs, and one
pass plans them all (tests/unit/test_scheduler.py counts the passes). Leases created but not
planned yet must not count against the pending quota when free exporters can grant them.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from jumpstarter.client.v1 import client_pb2

from .central import Central, StubExporter, close_central, is_true, seconds, start_central

LIMIT = 3

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def central(request: pytest.FixtureRequest) -> Iterator[Central]:
    c = start_central(router=False, max_pending_leases=getattr(request, "param", LIMIT))
    try:
        yield c
    finally:
        close_central(c)


def burst(central: Central, namespace: str, clients: list[str], each: int) -> list[client_pb2.Lease]:
    """`each` CreateLease(board=q) from every client in `clients`, all sent at once; their answers
    (the first refusal raises). The clients' channels are closed afterwards."""
    peers = [central.peer(i) for i in central.create_many("client", namespace, clients)]
    spec = client_pb2.Lease(selector="board=q")
    spec.duration.CopyFrom(seconds(600))
    try:
        futures = [
            peer.clients.CreateLease.future(
                client_pb2.CreateLeaseRequest(parent=peer.parent, lease=spec), metadata=peer.md, timeout=60
            )
            for _ in range(each)
            for peer in peers
        ]
        return [f.result() for f in futures]
    finally:
        for peer in peers:
            peer.close()


@pytest.mark.parametrize("central", [1], indirect=True)  # one pending lease per client
def test_a_burst_that_free_exporters_can_grant_is_not_refused_by_the_pending_quota(central: Central):
    """A pending lease whose request is not planned yet is granted by the pass: it must not count."""
    count = 6
    exporters = [
        StubExporter(central, e).start()
        for e in central.create_many("exporter", "free", [f"e{i}" for i in range(count)], board="q")
    ]
    try:
        leases = burst(central, "free", ["alice"], count)
    except grpc.RpcError as exc:
        raise AssertionError(f"a grantable request was refused: {exc.code().name}: {exc.details()}") from None
    finally:
        for exporter in exporters:
            exporter.close()
    assert all(is_true(le, "Ready") for le in leases), [le.conditions for le in leases]
    assert len({le.exporter for le in leases}) == count
