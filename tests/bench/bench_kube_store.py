"""Lease grant latency on the Kubernetes store vs SQLite, with many Exporter resources (issue 11).

    .venv/bin/python tests/bench/bench_kube_store.py [--exporters 1000] [--grants 200]

For each store: EXPORTERS online exporters (labels `board=bN`, `pool=all`), then GRANTS times:
a client submits a lease for one free board (`board=bN`) through the real LeaseScheduler, which
plans a full pass over every exporter and grants it; the time from submit to the granted lease
is one sample; the lease is then released. The Kubernetes store talks HTTPS to the in-test API
server (tests/harness/kube_api.py, in this process): a real cluster adds its network round trips
and etcd's fsyncs to each of the grant's writes (claim, lease status, audit), so read its figures
as the store's own cost. Not a pytest test (bench_*.py is not collected).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from controllerd.hub import Hub  # noqa: E402
from controllerd.records import Exporter, ExporterStatus, Lease  # noqa: E402
from controllerd.scheduler import LeaseScheduler  # noqa: E402
from tests.bench.bench_controller import table  # noqa: E402
from tests.unit.stores import NAMESPACE, Backing  # noqa: E402


async def measure(kind: str, exporters: int, grants: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp, Backing(kind, Path(tmp)) as backing:
        store = backing.open()
        started = time.perf_counter()
        for i in range(exporters):
            await store.save_exporter(
                Exporter(
                    NAMESPACE,
                    f"e{i:04d}",
                    labels={"board": f"b{i}", "pool": "all"},
                    status=ExporterStatus.AVAILABLE,
                    last_seen=time.time(),
                    registered=True,
                )
            )
        populate = time.perf_counter() - started
        scheduler = LeaseScheduler(store, Hub(), offline_after=3600)
        samples = []
        for n in range(grants):
            lease = Lease(
                NAMESPACE, f"l{n:05d}", f"client-{n % 20}", selector=f"board=b{n % exporters}", duration=600
            )
            begin = time.perf_counter()
            granted = await scheduler.submit(lease)
            samples.append(time.perf_counter() - begin)
            assert granted.exporter == f"e{n % exporters:04d}", granted
            await scheduler.release(granted)
        cuts = statistics.quantiles(samples, n=100)
        return [
            kind,
            str(exporters),
            f"{populate:.1f}",
            f"{statistics.median(samples) * 1000:.1f}",
            f"{cuts[98] * 1000:.1f}",
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporters", type=int, default=1000)
    parser.add_argument("--grants", type=int, default=200)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows = [
        tuple(asyncio.run(measure(kind, args.exporters, args.grants))) for kind in ("sqlite", "kubernetes")
    ]
    header = ("store", "exporters", "populate s", "grant p50 ms", "grant p99 ms")
    table(f"lease grant latency, {args.grants} grants, one at a time", header, rows)


if __name__ == "__main__":
    main()
