"""Two controller replicas (processes) on one Kubernetes cluster (the in-test API server,
tests/harness/kube_api.py): one schedules; kill it with SIGKILL mid-scheduling and the other
takes over within seconds; 20 clients racing for 5 exporters never get a double grant, checked
at every resourceVersion the cluster went through.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controllerd.records import Exporter, ExporterStatus, Lease
from controllerd.store import open_store
from controllerd.store.kubernetes import KubernetesStore
from jumpstarter.backoff import Deadline
from tests.harness.kube_api import FakeCluster, KubeApiServer

NS = "lab"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Replica:
    def __init__(self, api: KubeApiServer, identity: str) -> None:
        self.identity = identity
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.kube_replica", api.kubeconfig, NS, identity],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, text: str, deadline: Deadline) -> None:
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline.remaining()))
            except queue.Empty:
                raise AssertionError(f"{self.identity}: no {text!r} in time") from None
            if line.startswith(text):
                return

    def saw(self, text: str) -> bool:
        """Whether a line starting with `text` came (reads what is there now, without waiting)."""
        seen = False
        while not self.lines.empty():
            seen = self.lines.get_nowait().startswith(text) or seen
        return seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def cluster() -> Iterator[KubeApiServer]:
    with KubeApiServer(FakeCluster(history=1_000_000)) as api:
        yield api


def lease_history(fake: FakeCluster) -> list[tuple[int, str, dict[str, Any]]]:
    with fake.lock:
        return [
            (revision, key[2], obj)
            for revision, _, key, obj, _ in fake.events
            if key[0] == ("jumpstarter.dev", "v1alpha1", "leases")
        ]


def double_grants(fake: FakeCluster) -> list[str]:
    """Replay every lease write: after each, no exporter may be named by two not-ended leases,
    and no lease may move from one exporter to another."""
    state: dict[str, tuple[str | None, bool]] = {}
    problems = []
    for revision, name, obj in lease_history(fake):
        status = obj.get("status") or {}
        exporter = (status.get("exporterRef") or {}).get("name")
        before = state.get(name, (None, False))[0]
        if before is not None and exporter != before:
            problems.append(f"rv {revision}: lease {name} moved from {before} to {exporter}")
        state[name] = (exporter or before, bool(status.get("ended")))
        holders: dict[str, list[str]] = {}
        for lease, (held, ended) in state.items():
            if held is not None and not ended:
                holders.setdefault(held, []).append(lease)
        problems += [f"rv {revision}: {e} held by {sorted(ls)}" for e, ls in holders.items() if len(ls) > 1]
    return problems


def test_the_other_replica_takes_over_when_the_leader_dies_and_nothing_is_granted_twice(cluster):
    seed = open_store(f"kubernetes://{NS}?kubeconfig={cluster.kubeconfig}")
    assert isinstance(seed, KubernetesStore)
    exporters = [f"board-{i}" for i in range(5)]

    async def add_boards() -> None:
        for name in exporters:
            await seed.save_exporter(
                Exporter(
                    NS,
                    name,
                    labels={"board": "rpi4"},
                    status=ExporterStatus.AVAILABLE,
                    last_seen=time.time(),
                    registered=True,
                )  # fmt: skip
            )

    asyncio.run(add_boards())
    first = Replica(cluster, "replica-a")
    second = None
    try:
        first.wait_for("LEADING", Deadline(60))
        second = Replica(cluster, "replica-b")
        second.wait_for("READY", Deadline(60))

        async def clients() -> None:  # 20 clients, 2 leases each, all at once
            await asyncio.gather(*(
                seed.create_lease(Lease(NS, f"c{c:02d}-{r}", f"client-{c:02d}", selector="board=rpi4", duration=1.0))
                for c in range(20) for r in range(2)
            ))  # fmt: skip

        asyncio.run(clients())
        names = {f"c{c:02d}-{r}" for c in range(20) for r in range(2)}

        def granted() -> set[str]:
            return {
                name for _, name, obj in lease_history(cluster.cluster)
                if ((obj.get("status") or {}).get("exporterRef") or {}).get("name")
            }  # fmt: skip

        deadline = Deadline(90)
        while len(granted()) < 8:  # mid-scheduling: some granted, most still queued
            assert not deadline.expired(), f"the leader granted only {len(granted())} leases"
            time.sleep(0.05)
        os.kill(first.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert not second.saw("LEADING")  # b did not lead while a lived
        second.wait_for("LEADING", Deadline(60))
        takeover = time.monotonic() - killed
        print(f"takeover after the leader's death: {takeover:.2f}s")

        deadline = Deadline(120)
        while granted() != names:
            assert not deadline.expired(), f"not granted after the takeover: {sorted(names - granted())}"
            time.sleep(0.1)
        assert double_grants(cluster.cluster) == []
        with cluster.cluster.lock:
            holder = cluster.cluster.objects[
                (("coordination.k8s.io", "v1", "leases"), NS, "jumpstarter-controller")
            ]
        assert holder["spec"]["holderIdentity"] == "replica-b"
        assert holder["spec"]["leaseTransitions"] == 1
    finally:
        first.stop()
        if second is not None:
            second.stop()
        seed.close()


def test_the_invariant_checker_sees_a_double_grant():
    """The replay above finds what it must: two not-ended leases naming one exporter."""
    fake = FakeCluster()
    gvr = ("jumpstarter.dev", "v1alpha1", "leases")
    with fake.lock:
        for name in ("a", "b"):
            fake.create((gvr, NS, name), _kind(), {"metadata": {"name": name}})
            current = fake.objects[(gvr, NS, name)]
            body = dict(current, status={"exporterRef": {"name": "board-0"}, "ended": False})
            fake.replace((gvr, NS, name), _kind(), body, status_only=True)
    assert double_grants(fake) == ["rv 5: board-0 held by ['a', 'b']"]


def _kind() -> Any:
    from tests.harness.kube_api import KINDS

    return KINDS[("jumpstarter.dev", "v1alpha1", "leases")]
