"""The per-client pending lease quota (`max_pending_leases`) of a real controllerd.

One controllerd serves the module with a limit of 3. Each test works in its own
namespace on one exporter that is never online, so every lease stays pending.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from jumpstarter.client.v1 import client_pb2
from jumpstarter.v1 import jumpstarter_pb2, kubernetes_pb2

from .central import Central, Peer, close_central, condition, refused, short, start_central

LIMIT = 3
CODE = grpc.StatusCode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def central() -> Iterator[Central]:
    c = start_central(router=False, max_pending_leases=LIMIT)
    try:
        yield c
    finally:
        close_central(c)


@pytest.fixture
def peers(central: Central, request: pytest.FixtureRequest) -> Iterator[dict[str, Peer]]:
    """alice and bob in a namespace of their own, with one offline exporter labelled board=q."""
    namespace = request.node.name.removeprefix("test_")[:40].replace("_", "-").strip("-")
    central.create_many("exporter", namespace, ["board"], board="q")
    out = {i.name: central.peer(i) for i in central.create_many("client", namespace, ["alice", "bob"])}
    try:
        yield out
    finally:
        for peer in out.values():
            peer.close()


def fill(peer: Peer) -> list[str]:
    """LIMIT pending leases for `peer`; returns their names."""
    names = [peer.create_lease("board=q", lease_id=f"{peer.identity.name}-{i}").name for i in range(LIMIT)]
    assert all(condition(peer.get_lease(n), "Pending").status == "True" for n in names)
    return names


def pending_names(peer: Peer) -> list[str]:
    """`peer`'s own pending leases (ListLeases shows the whole namespace)."""
    mine = f"{peer.parent}/clients/{peer.identity.name}"
    return sorted(
        short(le.name)
        for le in peer.list_leases(only_active=True)
        if le.client == mine and not le.HasField("exporter")
    )


def test_one_lease_over_the_limit_is_refused_and_stores_nothing(peers: dict[str, Peer]):
    alice, bob = peers["alice"], peers["bob"]
    held = fill(alice)

    error = refused(lambda: alice.create_lease("board=q", lease_id="alice-extra"))
    assert error.code() == CODE.RESOURCE_EXHAUSTED, error
    assert f"alice already has {LIMIT} pending leases, the limit is {LIMIT}" in error.details()
    assert "max_pending_leases" in error.details()
    assert refused(lambda: alice.get_lease("alice-extra")).code() == CODE.NOT_FOUND
    assert pending_names(alice) == sorted(short(n) for n in held)

    assert condition(bob.create_lease("board=q", lease_id="bob-0"), "Pending").status == "True"

    alice.delete_lease(held[0])
    again = alice.create_lease("board=q", lease_id="alice-extra")
    assert condition(again, "Pending").status == "True"


def test_concurrent_creates_from_one_client_never_exceed_the_limit(peers: dict[str, Peer]):
    alice = peers["alice"]
    attempts = 20
    barrier = threading.Barrier(attempts)

    def create(i: int) -> str:
        barrier.wait()
        try:
            alice.create_lease("board=q", lease_id=f"race-{i}")
            return "created"
        except grpc.RpcError as exc:
            return exc.code().name

    with ThreadPoolExecutor(attempts) as pool:
        outcomes = list(pool.map(create, range(attempts)))
    assert sorted(outcomes) == ["RESOURCE_EXHAUSTED"] * (attempts - LIMIT) + ["created"] * LIMIT
    assert len(pending_names(alice)) == LIMIT


def test_legacy_request_lease_counts_against_the_same_limit(peers: dict[str, Peer]):
    alice = peers["alice"]
    fill(alice)
    request = jumpstarter_pb2.RequestLeaseRequest(
        duration=Duration(seconds=60), selector=kubernetes_pb2.LabelSelector(match_labels={"board": "q"})
    )
    error = refused(lambda: alice.controller.RequestLease(request, metadata=alice.md, timeout=10))
    assert error.code() == CODE.RESOURCE_EXHAUSTED and "limit is 3" in error.details()
    assert len(pending_names(alice)) == LIMIT


def test_a_pending_lease_cannot_be_transferred_to_a_client_at_its_limit(peers: dict[str, Peer]):
    alice, bob = peers["alice"], peers["bob"]
    fill(alice)
    lease = bob.create_lease("board=q", lease_id="gift")
    move = client_pb2.Lease(name=lease.name, client=f"{alice.parent}/clients/alice")
    error = refused(lambda: bob.update_lease(move, ["client"]))
    assert error.code() == CODE.RESOURCE_EXHAUSTED and "alice already has 3" in error.details()
    assert bob.get_lease("gift").client.endswith("/clients/bob")
    assert len(pending_names(alice)) == LIMIT
