"""What the Kubernetes store writes is valid for the CRDs we ship (deploy/kubernetes/base/crds).

A real API server refuses (or silently prunes) fields its CRD does not declare; the in-test API
server does not check schemas, so this test does: every object the store leaves in the fake
cluster after a lease's whole life is checked against its CRD's openAPIV3Schema.
"""

from __future__ import annotations

import asyncio
from typing import Any

from controllerd import audit
from controllerd.records import AccessPolicy, Client, Exporter, ExporterStatus, Lease, TokenRecord
from tests.k8s_schema import errors
from tests.unit.stores import NAMESPACE, Backing
from tests.unit.test_k8s_manifests import render, schema_of


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, plural) -> schema, for every CRD in the base layout."""
    return {
        (doc["spec"]["group"], doc["spec"]["names"]["plural"]): schema_of(doc)
        for doc in render("base")
        if doc["kind"] == "CustomResourceDefinition"
    }


async def a_lease_life(store: Any) -> None:
    exporter = Exporter(NAMESPACE, "rpi4-01", labels={"board": "rpi4"}, registered=True)
    exporter.status, exporter.last_seen = ExporterStatus.AVAILABLE, 1_700_000_000.5
    exporter.health, exporter.health_reason = "maintenance", "replacing the SD card"
    exporter.devices = [{"uuid": "u1", "parent_uuid": None, "labels": {"driver": "power"}}]
    await store.save_exporter(exporter)
    client = Client(NAMESPACE, "alice", labels={"team": "kernel"})
    await store.save_client(client)
    await store.save_policy(AccessPolicy(NAMESPACE, "p1", "board=rpi4", "team=kernel", priority=3))
    await store.save_token(
        TokenRecord(
            "5f0c3c7e-1d7b-4a3e-9a4e-2b7f5e0d9c11", client.subject, NAMESPACE, "Client", "alice", 1.5, 99.5
        )
    )
    lease = await store.create_lease(
        Lease(NAMESPACE, "l1", "alice", selector="board=rpi4", duration=600.0, tags={"ci": "yes"}),
        [audit.event(NAMESPACE, "lease", "l1", "created", "client:alice", "Created", "")],
    )
    lease.set_condition("Pending", "True", "NotAvailable", "queue position 1")
    await store.save_lease(lease)
    lease.exporter, lease.effective_begin = "rpi4-01", 1_700_000_001.0
    lease.set_condition("Ready", "True", "Granted", "")
    await store.save_lease(lease)
    lease.ended, lease.effective_end = True, 1_700_000_100.0
    await store.save_lease(lease)


def test_every_object_the_kubernetes_store_writes_fits_our_crds(tmp_path):
    schemas = crd_schemas()
    with Backing("kubernetes", tmp_path) as backing:
        asyncio.run(a_lease_life(backing.open()))
        assert backing.api is not None
        objects = dict(backing.api.cluster.objects)
    checked = set()
    for ((group, _version, plural), _namespace, name), obj in sorted(objects.items()):
        if "jumpstarter.dev" not in group:
            continue  # coordination Leases: a built-in kind
        schema = schemas.get((group, plural))
        assert schema is not None, f"the store writes {group}/{plural}, for which no CRD is shipped"
        body = {k: v for k, v in obj.items() if k != "metadata"}  # ObjectMeta: checked by the API server
        problems = errors(schema, body)
        assert not problems, f"{plural}/{name}: {problems}"
        checked.add(plural)
    assert {"exporters", "clients", "leases", "exporteraccesspolicies"} <= checked, checked
