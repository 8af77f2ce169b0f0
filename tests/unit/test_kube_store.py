"""What only the Kubernetes store has: upstream's objects as kubectl sees them, watches (kubectl-made
resources, `410 Gone`), strict lease writes, exporter claims; and the in-test API server's rules.
The store contract both stores share: tests/unit/test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from controllerd.errors import Conflict, InvalidArgument, StorageError
from controllerd.hub import Hub
from controllerd.records import Exporter, ExporterStatus, Lease
from controllerd.scheduler import LeaseScheduler
from controllerd.store import open_store
from controllerd.store.kubernetes import KubernetesStore
from jumpstarter.backoff import Deadline
from jumpstarter.errors import ConfigError
from tests.harness.kube_api import KINDS, KubeApiServer

NS = "lab"
LEASES = ("jumpstarter.dev", "v1alpha1", "leases")
EXPORTERS = ("jumpstarter.dev", "v1alpha1", "exporters")
CLIENTS = ("jumpstarter.dev", "v1alpha1", "clients")


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer() as api:
        yield api


def open_kube(api: KubeApiServer, **kw: Any) -> KubernetesStore:
    store = open_store(f"kubernetes://{NS}?kubeconfig={api.kubeconfig}")
    assert isinstance(store, KubernetesStore)
    return store


def kubectl_apply(api: KubeApiServer, gvr: tuple[str, str, str], obj: dict[str, Any]) -> None:
    """What `kubectl apply` of an upstream-shaped resource does: create, then its status (if any)."""
    kind = KINDS[gvr]
    key = (gvr, NS, obj["metadata"]["name"])
    with api.cluster.lock:
        created = api.cluster.create(key, kind, obj)
        if "status" in obj:
            api.cluster.replace(key, kind, dict(created, status=obj["status"]), status_only=True)


def raw(api: KubeApiServer, gvr: tuple[str, str, str], name: str) -> dict[str, Any]:
    with api.cluster.lock:
        return json.loads(json.dumps(api.cluster.objects[(gvr, NS, name)]))


def upstream_exporter(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "jumpstarter.dev/v1alpha1",
        "kind": "Exporter",
        "metadata": {"name": name, "labels": {"board": "rpi4"}},
        "spec": {"username": "dex:lab-host-1"},
        "status": {
            "exporterStatus": "Available",
            "lastSeen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "endpoint": "controller.example:443",
        },
    }


def wait_until(check, seconds: float = 30.0) -> None:
    deadline = Deadline(seconds)
    while not check():
        assert not deadline.expired(), "condition not reached in time"
        time.sleep(0.02)


def test_an_exporter_made_with_kubectl_is_seen_and_granted_without_a_poke(api):
    store = open_kube(api)

    async def scenario():
        hub = Hub()
        loop = asyncio.get_running_loop()
        store.on_change = lambda plural, obj: loop.call_soon_threadsafe(hub.wake_scheduler)
        scheduler = LeaseScheduler(store, hub, offline_after=3600)
        await store.save_exporter(
            Exporter(NS, "offline", labels={"board": "rpi4"}, status=ExporterStatus.OFFLINE)
        )
        waiting = await scheduler.submit(Lease(NS, "l1", "alice", selector="board=rpi4", duration=600))
        assert waiting.exporter is None and waiting.condition("Pending").reason == "Offline"
        running = asyncio.create_task(scheduler.run())
        try:
            kubectl_apply(api, EXPORTERS, upstream_exporter("from-kubectl"))
            deadline = Deadline(30)
            while (await store.get_lease(NS, "l1")).exporter != "from-kubectl":
                assert not deadline.expired(), "the scheduler never saw the kubectl-made exporter"
                await asyncio.sleep(0.02)
        finally:
            running.cancel()
        exporter = await store.get_exporter(NS, "from-kubectl")
        assert exporter.enabled and exporter.status == ExporterStatus.AVAILABLE and exporter.last_seen

    asyncio.run(scenario())
    store.close()


def test_a_watch_from_a_compacted_version_gets_410_and_the_store_lists_again(api):
    store = open_kube(api)
    lists = store.exporters.relists
    kubectl_apply(api, CLIENTS, {"metadata": {"name": "alice"}})  # the cluster moves on; exporters do not
    api.cluster.compact()  # the history the exporters' watch would resume from is gone
    api.cluster.drop_watches()  # and the watch is cut: it resumes from its last exporter version -> 410
    kubectl_apply(api, EXPORTERS, upstream_exporter("after-compaction"))
    wait_until(lambda: store.exporters.relists > lists)
    wait_until(lambda: store.exporters.get("after-compaction") is not None)
    store.close()


def test_a_resync_heals_a_change_whose_event_was_missed(api):
    from controllerd.store.kube_client import Api, api_client

    store = KubernetesStore(Api(api_client(api.kubeconfig, None), NS), resync=0.5)
    kubectl_apply(api, EXPORTERS, upstream_exporter("e1"))
    wait_until(lambda: store.exporters.get("e1") is not None)
    with api.cluster.lock:  # changed without an event (one a watch lost): only a new list shows it
        obj = api.cluster.objects[(EXPORTERS, NS, "e1")]
        obj["spec"]["enabled"] = False
        api.cluster.revision += 1
        obj["metadata"]["resourceVersion"] = str(api.cluster.revision)
    wait_until(lambda: asyncio.run(store.get_exporter(NS, "e1")).enabled is False)
    store.close()


def test_stored_objects_carry_upstreams_fields_and_the_ended_label(api):
    store = open_kube(api)

    async def scenario():
        await store.save_exporter(
            Exporter(
                NS, "e1", labels={"board": "rpi4"}, status=ExporterStatus.AVAILABLE, last_seen=time.time()
            )
        )
        scheduler = LeaseScheduler(store, Hub(), offline_after=3600)
        lease = await scheduler.submit(Lease(NS, "l1", "alice", selector="board=rpi4", duration=600))
        granted, held = raw(api, LEASES, "l1"), raw(api, EXPORTERS, "e1")
        await scheduler.release(lease)
        return granted, held, raw(api, LEASES, "l1"), raw(api, EXPORTERS, "e1")

    granted, held, ended, freed = asyncio.run(scenario())
    assert granted["spec"]["clientRef"] == {"name": "alice"}
    assert granted["spec"]["selector"] == {"matchLabels": {"board": "rpi4"}}
    assert granted["spec"]["duration"] == "10m0s"
    assert granted["status"]["exporterRef"] == {"name": "e1"} and granted["status"]["ended"] is False
    assert {c["type"]: c["status"] for c in granted["status"]["conditions"]} == {"Ready": "True"}
    assert "jumpstarter.dev/lease-ended" not in granted["metadata"].get("labels", {})
    assert held["spec"]["enabled"] is True and held["status"]["exporterStatus"] == "Available"
    assert held["status"]["leaseRef"] == {"name": "l1"}
    assert ended["metadata"]["labels"]["jumpstarter.dev/lease-ended"] == "true"
    assert ended["status"]["ended"] is True and ended["spec"]["release"] is True
    assert "leaseRef" not in freed["status"]
    store.close()


def test_fields_others_wrote_are_kept_by_our_writes(api):
    kubectl_apply(api, EXPORTERS, upstream_exporter("e1"))
    store = open_kube(api)

    async def scenario():
        exporter = await store.get_exporter(NS, "e1")
        exporter.enabled = False
        exporter.status_message = "cleaning"
        await store.save_exporter(exporter)

    asyncio.run(scenario())
    obj = raw(api, EXPORTERS, "e1")
    assert obj["spec"] == {"username": "dex:lab-host-1", "enabled": False}
    assert (
        obj["status"]["endpoint"] == "controller.example:443" and obj["status"]["statusMessage"] == "cleaning"
    )
    store.close()


def test_a_stale_lease_copy_is_refused_instead_of_undoing_a_grant(api):
    """Replica B still holds the pending lease it read; replica A grants it; B's write must not win."""
    a, b = open_kube(api), open_kube(api)

    async def scenario():
        await a.save_exporter(Exporter(NS, "e1", status=ExporterStatus.AVAILABLE, last_seen=time.time()))
        await a.create_lease(Lease(NS, "l1", "alice", selector="board=rpi4", duration=600))
        wait_until(lambda: b.leases.get("l1") is not None)
        stale = await b.get_lease(NS, "l1")
        fresh = await a.get_lease(NS, "l1")
        fresh.exporter = "e1"
        await a.save_lease(fresh)
        stale.set_condition("Pending", "True", "NotAvailable", "queue position 1")
        with pytest.raises(StorageError, match="changed since it was read"):
            await b.save_lease(stale)
        return await a.get_lease(NS, "l1")

    assert asyncio.run(scenario()).exporter == "e1"
    a.close()
    b.close()


def test_a_claim_left_by_a_crashed_replica_blocks_others_until_its_lease_ends(api):
    """A replica died between claiming an exporter for a lease and storing the lease's grant."""
    store = open_kube(api)

    async def scenario():
        await store.save_exporter(Exporter(NS, "e1", status=ExporterStatus.AVAILABLE, last_seen=time.time()))
        first = await store.create_lease(Lease(NS, "first", "alice", selector="a=b", duration=600))
        other = await store.create_lease(Lease(NS, "other", "bob", selector="a=b", duration=600))
        await asyncio.to_thread(store._claim, "e1", "first")  # what the dead replica left behind
        other.exporter = "e1"
        with pytest.raises(Conflict, match="held by lease first"):
            await store.save_lease(other)
        first.exporter = "e1"  # the lease the claim is for completes its grant
        await store.save_lease(first)
        first.ended = True
        await store.save_lease(first)
        other = await store.get_lease(NS, "other")
        other.exporter = "e1"
        await store.save_lease(other)  # ended: its claim no longer holds the exporter
        return raw(api, EXPORTERS, "e1")["status"]["leaseRef"]

    assert asyncio.run(scenario()) == {"name": "other"}
    store.close()


def test_urls_and_namespaces_are_checked(api):
    with pytest.raises(ConfigError, match="unknown option"):
        open_store(f"kubernetes://{NS}?kubeconfig={api.kubeconfig}&token=x")
    with pytest.raises(ConfigError, match="expected kubernetes://NAMESPACE"):
        open_store("kubernetes:///?kubeconfig=x")
    with pytest.raises(ConfigError, match="cannot load the cluster configuration"):
        open_store(f"kubernetes://{NS}?kubeconfig={api.kubeconfig}.missing")
    store = open_kube(api)
    with pytest.raises(InvalidArgument, match="serves namespace 'lab'"):
        asyncio.run(store.save_exporter(Exporter("other", "e1")))
    store.close()


@pytest.mark.parametrize(
    "store, error",
    [
        ("kubernetes://jumpstarter", None),
        ("kubernetes://lab?kubeconfig=/etc/k.yaml&context=kind-lab", None),
        ("kubernetes://Lab_1", "expected kubernetes://NAMESPACE"),
        ("kubernetes://lab?token=x", "unknown option"),
        ("postgres://db", "expected sqlite:///PATH or kubernetes://NAMESPACE"),
    ],
)
def test_controllerd_yaml_takes_a_kubernetes_store(tmp_path, store, error):
    from controllerd import config

    path = tmp_path / "controllerd.yaml"
    path.write_text(f"store: {store!r}\n")
    if error is None:
        assert config.load(str(path)).store == store
    else:
        with pytest.raises(ConfigError, match=error):
            config.load(str(path))


def _request(
    api: KubeApiServer, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=api.kubeconfig.replace("kubeconfig", "ca.crt"))
    request = urllib.request.Request(
        api.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token or api.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_test_api_server_follows_the_documented_rules(api):
    base = "/apis/jumpstarter.dev/v1alpha1/namespaces/lab/exporters"
    assert _request(api, "GET", base, token="wrong")[0] == 401
    code, created = _request(
        api, "POST", base, {"metadata": {"name": "e1", "labels": {"a": "1"}}, "status": {"x": 1}}
    )
    assert code == 201 and "status" not in created  # POST ignores status (status subresource)
    code, status = _request(api, "POST", base, {"metadata": {"name": "e1"}})
    assert (code, status["reason"]) == (409, "AlreadyExists")
    no_version = {"metadata": {"name": "e1"}, "spec": {"enabled": False}}
    assert _request(api, "PUT", f"{base}/e1", no_version)[0] == 422  # custom resources need resourceVersion
    updated = dict(created, spec={"enabled": False}, status={"exporterStatus": "Available"})
    code, after = _request(api, "PUT", f"{base}/e1", updated)
    assert (
        code == 200 and "status" not in after and after["metadata"]["generation"] == 2
    )  # main ignores status
    code, status = _request(api, "PUT", f"{base}/e1", updated)  # the same, now stale, resourceVersion
    assert (code, status["reason"]) == (409, "Conflict")
    code, after = _request(
        api, "PUT", f"{base}/e1/status", dict(after, spec={}, status={"exporterStatus": "Offline"})
    )
    assert (
        code == 200
        and after["spec"] == {"enabled": False}
        and after["status"] == {"exporterStatus": "Offline"}
    )
    _request(api, "POST", base, {"metadata": {"name": "e2", "labels": {"a": "2"}}})
    code, listed = _request(api, "GET", f"{base}?labelSelector=a%20in%20(2,3)")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["e2"]
    api.cluster.compact()
    context = ssl.create_default_context(cafile=api.kubeconfig.replace("kubeconfig", "ca.crt"))
    request = urllib.request.Request(
        f"{api.url}{base}?watch=true&resourceVersion=1", headers={"Authorization": f"Bearer {api.token}"}
    )
    with urllib.request.urlopen(request, context=context, timeout=30) as reply:
        event = json.loads(reply.readline())
    assert (
        event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    )


def test_a_replica_hears_of_grants_made_by_another_and_does_not_plan_while_following(api):
    """replicate() (what controllerd/main.py runs): the follower's exporter streams learn of the
    leader's grant through the watch, and the follower's own passes grant nothing."""
    from controllerd.leader import replicate

    leader, follower = open_kube(api), open_kube(api)

    async def scenario():
        hub = Hub()
        scheduler = LeaseScheduler(follower, hub, offline_after=3600)
        elector = replicate(follower, hub, scheduler, "follower")
        assert elector is not None and not elector.leading
        await leader.save_exporter(
            Exporter(
                NS, "e1", labels={"board": "rpi4"}, status=ExporterStatus.AVAILABLE, last_seen=time.time()
            )
        )
        wait_until(lambda: follower.exporters.get("e1") is not None)
        lease = await scheduler.submit(Lease(NS, "l1", "alice", selector="board=rpi4", duration=600))
        await scheduler.poke()
        assert (
            lease.exporter is None and (await follower.get_lease(NS, "l1")).exporter is None
        )  # stored, not planned
        seen = hub.exporters[(NS, "e1")].version
        wait_until(lambda: leader.leases.get("l1") is not None)
        await LeaseScheduler(leader, Hub(), offline_after=3600).poke()  # the leader plans
        deadline = Deadline(30)
        while hub.exporters[(NS, "e1")].version == seen:  # the follower's streams of e1 are woken
            assert not deadline.expired(), "the follower never heard of the grant"
            await asyncio.sleep(0.02)
        return await follower.get_lease(NS, "l1")

    assert asyncio.run(scenario()).exporter == "e1"
    leader.close()
    follower.close()
