"""Leader election on a coordination.k8s.io/v1 Lease (controllerd/leader.py), on the in-test API
server: one leader at a time, a clean release hands over at once, a dead leader's lease expires,
and a leader cut off from the API stops leading before the others may take over.
The two-replica processes test: tests/integration/test_kube_replicas.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from controllerd.errors import StorageError
from controllerd.leader import LeaderElector
from controllerd.store.kube_client import Api, api_client
from jumpstarter.backoff import Deadline
from tests.harness.kube_api import KubeApiServer

LEASE = (("coordination.k8s.io", "v1", "leases"), "lab", "jumpstarter-controller")


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer() as api:
        yield api


def elector(api: KubeApiServer, identity: str, duration: float = 2.0) -> LeaderElector:
    return LeaderElector(
        Api(api_client(api.kubeconfig, None), "lab"),
        identity,
        duration=duration,
        renew_deadline=1.5,
        retry=0.2,
    )


async def until(check, seconds: float = 30.0) -> None:
    deadline = Deadline(seconds)
    while not check():
        assert not deadline.expired(), "condition not reached in time"
        await asyncio.sleep(0.02)


def holder(api: KubeApiServer) -> dict:
    with api.cluster.lock:
        return dict(api.cluster.objects[LEASE]["spec"])


def test_one_leader_at_a_time_and_a_dead_leaders_lease_expires(api):
    a, b = elector(api, "a"), elector(api, "b")
    both: list[tuple[bool, bool]] = []

    async def scenario():
        led = asyncio.Event()

        async def lead() -> None:
            led.set()
            await asyncio.Event().wait()  # schedules until cancelled

        running_a = asyncio.create_task(a.run(lead))
        await until(lambda: a.leading)
        running_b = asyncio.create_task(b.run(lead))
        watch_end = time.monotonic() + 1.5  # b keeps trying while a renews
        while time.monotonic() < watch_end:
            both.append((a.leading, b.leading))
            await asyncio.sleep(0.05)
        running_a.cancel()  # a dies without releasing: b must wait the lease out, then lead
        died = time.monotonic()
        await until(lambda: b.leading)
        waited = time.monotonic() - died
        running_b.cancel()
        return waited

    waited = asyncio.run(scenario())
    assert both and all(leading == (True, False) for leading in both)
    assert waited >= 1.0  # not before the dead leader's claim could have run out (2 s, seen from b)
    spec = holder(api)
    assert (
        spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1 and spec["leaseDurationSeconds"] == 2
    )


def test_a_clean_release_hands_over_at_once(api):
    a, b = elector(api, "a"), elector(api, "b")

    async def scenario():
        async def lead() -> None:
            await asyncio.Event().wait()

        running_a = asyncio.create_task(a.run(lead))
        await until(lambda: a.leading)
        running_b = asyncio.create_task(b.run(lead))
        await asyncio.sleep(0.5)
        assert not b.leading
        running_a.cancel()
        await asyncio.gather(running_a, return_exceptions=True)
        a.leading = True  # what run() had when main.py stops: release() gives the lease up
        await a.release()
        given_up = holder(api)
        await until(lambda: b.leading)
        running_b.cancel()
        return given_up

    given_up = asyncio.run(scenario())
    assert given_up["holderIdentity"] == "" and given_up["leaseDurationSeconds"] == 1  # nobody to wait out
    assert holder(api)["holderIdentity"] == "b"


def test_a_leader_cut_off_from_the_api_stops_leading_before_another_takes_over(api):
    a, b = elector(api, "a", duration=3.0), elector(api, "b", duration=3.0)
    order: list[str] = []

    async def scenario():
        async def lead_a() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                order.append("a stopped")

        async def lead_b() -> None:
            order.append("b leads")
            await asyncio.Event().wait()

        running_a = asyncio.create_task(a.run(lead_a))
        await until(lambda: a.leading)
        running_b = asyncio.create_task(b.run(lead_b))

        def partitioned(*args: object) -> None:
            raise StorageError("kubernetes API: connection refused")

        a.api.get = partitioned  # type: ignore[method-assign]  # a alone loses the API (a partition)
        await until(lambda: "b leads" in order)
        for task in (running_a, running_b):
            task.cancel()
        await asyncio.gather(running_a, running_b, return_exceptions=True)

    asyncio.run(scenario())
    assert order[:2] == ["a stopped", "b leads"]  # never two leaders at once


def test_timings_are_checked():
    with pytest.raises(ValueError, match="retry < renew_deadline < duration"):
        LeaderElector(None, "x", duration=5, renew_deadline=6, retry=1)  # type: ignore[arg-type]


def test_the_leader_advertises_its_address_and_the_others_see_who_leads_where(api):
    """The other replicas forward calls to the address in the Lease (controllerd/replica.py): the
    holder writes its own, a release clears it, a new holder replaces it; `on_change` says so."""
    a, b = elector(api, "a"), elector(api, "b")
    a.address, b.address = "10.0.0.1:8082", "[fd00::2]:8082"
    changes: list[tuple[bool, object]] = []
    b.on_change = lambda: changes.append((b.leading, b.leader))

    def annotation() -> str | None:
        with api.cluster.lock:
            annotations = api.cluster.objects[LEASE]["metadata"].get("annotations") or {}
        return annotations.get("jumpstarter.dev/leader-address")

    async def scenario():
        async def lead() -> None:
            await asyncio.Event().wait()

        running_a = asyncio.create_task(a.run(lead))
        await until(lambda: a.leading)
        assert a.leader == ("a", "10.0.0.1:8082") and annotation() == "10.0.0.1:8082"
        running_b = asyncio.create_task(b.run(lead))
        await until(lambda: b.leader == ("a", "10.0.0.1:8082"))
        running_a.cancel()
        await asyncio.gather(running_a, return_exceptions=True)
        a.leading = True
        await a.release()
        released = annotation()
        await until(lambda: b.leading)
        running_b.cancel()
        return released

    released = asyncio.run(scenario())
    assert released is None  # nobody leads: no stale address to forward to
    assert annotation() == "[fd00::2]:8082" and b.leader == ("b", "[fd00::2]:8082")
    assert changes[0] == (False, ("a", "10.0.0.1:8082"))
    assert (True, ("b", "[fd00::2]:8082")) in changes  # then (False, …) when its task is cancelled
