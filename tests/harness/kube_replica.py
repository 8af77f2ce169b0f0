"""One controller replica for the two-replica tests: the real KubernetesStore, LeaseScheduler and
LeaderElector on a (fake) cluster, in its own process so a test can kill it with SIGKILL.

    python -m tests.harness.kube_replica KUBECONFIG NAMESPACE IDENTITY

Prints `LEADING IDENTITY` when elected. The gRPC services are not started: the replicas' part
under test is who schedules and what reaches the cluster; clients' leases are created in the
cluster by the test, as another replica's CreateLease or `kubectl apply` would.
"""

from __future__ import annotations

import asyncio
import sys

from controllerd.hub import Hub
from controllerd.leader import replicate
from controllerd.scheduler import LeaseScheduler
from controllerd.store import open_store
from controllerd.store.kubernetes import KubernetesStore

LEASE_SECONDS = 3.0  # short, so a takeover in the test takes seconds


async def replica(store: KubernetesStore, identity: str) -> None:
    hub = Hub()
    scheduler = LeaseScheduler(store, hub, offline_after=3600)
    elector = replicate(store, hub, scheduler, identity)  # what controllerd/main.py does
    assert elector is not None
    elector.duration, elector.renew_deadline, elector.retry = LEASE_SECONDS, 2.0, 0.5

    async def lead() -> None:
        print(f"LEADING {identity}", flush=True)
        await scheduler.run()

    await elector.run(lead)


def main() -> None:
    kubeconfig, namespace, identity = sys.argv[1:4]
    store = open_store(f"kubernetes://{namespace}?kubeconfig={kubeconfig}")
    assert isinstance(store, KubernetesStore)
    print(f"READY {identity}", flush=True)
    asyncio.run(replica(store, identity))


if __name__ == "__main__":
    main()
