"""Controller benchmark: registration, lease grants and memory of a real controllerd.

    /work/venv/bin/python tests/bench/bench_controller.py [--exporters 1000] [--burst 200]
                                                           [--grants 200] [--concurrent 100]

Starts `jumpstarter-controllerd` (TLS on loopback, SQLite store in a temporary
directory), creates every identity through its admin socket, and measures:

- BURST exporters registering at once: Register + ReportStatus(AVAILABLE) each,
  wall time until all are registered and per-exporter p50/p99;
- then all EXPORTERS registered with an open Status stream each (online, free);
- lease grant latency with EXPORTERS registered: GRANTS sequential
  CreateLease(selector matching all of them) until the lease is Ready, each lease
  kept (so every grant has to find a new free exporter among EXPORTERS);
- CONCURRENT lease requests at once, one client each, on CONCURRENT free
  exporters: wall time until all are Ready, per-request p50/p99;
- controllerd's RSS (and peak RSS) with everything registered and leased.

The load generator (this process: all exporters' streams and all clients) shares the
machine with controllerd, so the figures are an upper bound. Prints a markdown table.
Not a pytest test (bench_*.py is not collected).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jumpstarter.client.v1 import client_pb2, client_pb2_grpc  # noqa: E402
from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc  # noqa: E402
from tests.integration.central import Central, Identity, close_central, is_true, seconds  # noqa: E402

CHANNELS = 8  # client-side HTTP/2 connections the load is spread over


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return p50, p99


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def proc_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def admin_create(
    central: Central, kind: str, namespace: str, names: list[str], **labels: str
) -> list[Identity]:
    """The admin socket's create op over one channel (what `jumpstarter admin create` calls)."""
    out = []
    with grpc.insecure_channel(f"unix:{central.admin_socket}") as channel:
        method = channel.unary_unary("/jumpstarter.admin.v1.Admin/Call")
        for name in names:
            request = {
                "op": f"create_{kind}",
                "args": {"namespace": namespace, "name": name, "labels": labels},
            }
            reply = json.loads(method(json.dumps(request).encode(), timeout=60))["result"]
            out.append(Identity(kind.capitalize(), namespace, name, reply["token"]))
    return out


def table(title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """A markdown table under `title`, columns padded to their widest cell."""
    print(f"\n{title}\n")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


class Load:
    """grpc.aio channels to the controller, shared round-robin by every simulated peer."""

    def __init__(self, central: Central) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=central.ca)
        self.channels = [grpc.aio.secure_channel(central.endpoint, credentials) for _ in range(CHANNELS)]
        self.next = 0
        self.streams: list[asyncio.Task[None]] = []

    def channel(self) -> grpc.aio.Channel:
        self.next = (self.next + 1) % len(self.channels)
        return self.channels[self.next]

    async def register(self, exporter: Identity) -> float:
        stub = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel())
        md = exporter.metadata()
        started = time.perf_counter()
        await stub.Register(
            jumpstarter_pb2.RegisterRequest(labels={"jumpstarter.dev/name": exporter.name}),
            metadata=md,
            timeout=120,
        )
        await stub.ReportStatus(
            jumpstarter_pb2.ReportStatusRequest(status=common_pb2.EXPORTER_STATUS_AVAILABLE),
            metadata=md,
            timeout=120,
        )
        return time.perf_counter() - started

    async def open_status(self, exporter: Identity) -> None:
        """Keep the exporter's Status stream open (its heartbeat) until the benchmark ends."""
        first = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            stub = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel())
            try:
                async for _ in stub.Status(jumpstarter_pb2.StatusRequest(), metadata=exporter.metadata()):
                    if not first.done():
                        first.set_result(None)
            except grpc.RpcError as exc:
                if not first.done():
                    first.set_exception(exc)

        self.streams.append(asyncio.create_task(follow()))
        await first

    async def lease_until_ready(self, client: Identity, selector: str) -> tuple[float, str]:
        stub = client_pb2_grpc.ClientServiceStub(self.channel())
        md = client.metadata()
        started = time.perf_counter()
        lease = client_pb2.Lease(selector=selector)
        lease.duration.CopyFrom(seconds(3600))
        lease = await stub.CreateLease(
            client_pb2.CreateLeaseRequest(parent=f"namespaces/{client.namespace}", lease=lease),
            metadata=md,
            timeout=120,
        )
        while not is_true(lease, "Ready"):
            await asyncio.sleep(0.005)
            lease = await stub.GetLease(client_pb2.GetLeaseRequest(name=lease.name), metadata=md, timeout=120)
        return time.perf_counter() - started, lease.name

    async def release(self, client: Identity, name: str) -> None:
        stub = client_pb2_grpc.ClientServiceStub(self.channel())
        await stub.DeleteLease(
            client_pb2.DeleteLeaseRequest(name=name), metadata=client.metadata(), timeout=120
        )

    async def close(self) -> None:
        for task in self.streams:
            task.cancel()
        await asyncio.gather(*self.streams, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


async def bench(args: argparse.Namespace, central: Central) -> list[tuple[str, str]]:
    assert central.controller is not None
    pid = central.controller.pid
    rows: list[tuple[str, str]] = []
    ns = "bench"
    total = args.exporters

    started = time.perf_counter()
    exporters = admin_create(central, "exporter", ns, [f"e{i:04d}" for i in range(total)], pool="all")
    created = time.perf_counter() - started
    rows.append(
        (
            f"create {total} exporters via the admin socket (sequential)",
            f"{created:.2f} s ({ms(created / total)} each)",
        )
    )
    solo = admin_create(central, "client", ns, ["solo"])[0]
    crowd = admin_create(central, "client", ns, [f"c{i:03d}" for i in range(args.concurrent)])
    rows.append(("controllerd RSS, identities only", f"{proc_kib(pid, 'VmRSS') / 1024:.0f} MiB"))

    load = Load(central)
    try:
        burst = exporters[: args.burst]
        started = time.perf_counter()
        latencies = await asyncio.gather(*(load.register(e) for e in burst))
        wall = time.perf_counter() - started
        p50, p99 = quantiles(list(latencies))
        rows.append((f"{len(burst)} exporters registering at once: wall time", f"{wall:.2f} s"))
        rows.append(
            (f"{len(burst)} exporters registering at once: per exporter p50 / p99", f"{ms(p50)} / {ms(p99)}")
        )

        started = time.perf_counter()
        rest = exporters[args.burst :]
        for start in range(0, len(rest), 100):
            await asyncio.gather(*(load.register(e) for e in rest[start : start + 100]))
        for start in range(0, total, 100):
            await asyncio.gather(*(load.open_status(e) for e in exporters[start : start + 100]))
        online = time.perf_counter() - started
        rows.append((f"bring all {total} exporters online (register + Status stream)", f"{online:.2f} s"))
        rows.append(
            (f"controllerd RSS, {total} exporters online", f"{proc_kib(pid, 'VmRSS') / 1024:.0f} MiB")
        )

        grants = []
        held = []
        for _ in range(args.grants):
            latency, name = await load.lease_until_ready(solo, "pool=all")
            grants.append(latency)
            held.append(name)
        p50, p99 = quantiles(grants)
        rows.append(
            (
                f"lease grant latency, {total} exporters online (CreateLease → Ready), p50 / p99",
                f"{ms(p50)} / {ms(p99)}",
            )
        )
        for start in range(0, len(held), 50):
            await asyncio.gather(*(load.release(solo, name) for name in held[start : start + 50]))

        started = time.perf_counter()
        results = await asyncio.gather(*(load.lease_until_ready(c, "pool=all") for c in crowd))
        wall = time.perf_counter() - started
        p50, p99 = quantiles([latency for latency, _ in results])
        rows.append((f"{len(crowd)} concurrent lease requests: wall time until all Ready", f"{wall:.2f} s"))
        rows.append(
            (f"{len(crowd)} concurrent lease requests: per request p50 / p99", f"{ms(p50)} / {ms(p99)}")
        )
        rows.append(
            (
                f"controllerd RSS now / peak ({total} online, {len(crowd)} leased)",
                f"{proc_kib(pid, 'VmRSS') / 1024:.0f} MiB / {proc_kib(pid, 'VmHWM') / 1024:.0f} MiB",
            )
        )
    finally:
        await load.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exporters", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=200, help="exporters registering at once")
    parser.add_argument("--grants", type=int, default=200, help="sequential grants sampled")
    parser.add_argument("--concurrent", type=int, default=100, help="concurrent lease requests")
    args = parser.parse_args()
    if args.burst > args.exporters or args.concurrent > args.exporters:
        parser.error("--burst and --concurrent cannot exceed --exporters")

    central = Central(tempfile.mkdtemp(prefix="jscb-", dir="/tmp"), {"metrics": None})
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    try:
        central.start_controller()
        rows = asyncio.run(bench(args, central))
    finally:
        close_central(central)
        shutil.rmtree(central.directory, ignore_errors=True)

    title = f"controllerd benchmark ({os.cpu_count()} CPUs, SQLite store, TLS on loopback, grpcio {grpc.__version__})"
    table(title, ("measurement", "result"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
