"""Scheduler benchmark: the cost of one pass against the number of pending leases.

    .venv/bin/python tests/bench/bench_scheduler.py [--exporters 100] [--pending 250,500,1000,2000]
                                                    [--selectors 8] [--profile 1000]

Runs `LeaseScheduler` in this process on the real SQLite store (a temporary file):
EXPORTERS online exporters, each held by an active lease (so nothing can be granted),
then PENDING leases from PENDING/10 clients queued behind them, spread over SELECTORS
distinct selectors (`pool=all`, `board=bN`, `board in (...)`, `!broken`) and two access
policies. That is the state every CreateLease, release and status change re-plans: the
table gives the median wall time of one such pass, and the Python lines the scheduler and
the selector code executed in it (a count of work that does not depend on the machine).
`--profile P` prints the top of a cProfile of one pass with P pending leases.
Not a pytest test (bench_*.py is not collected).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from controllerd.hub import Hub  # noqa: E402
from controllerd.records import AccessPolicy, Client, Exporter, ExporterStatus, Lease  # noqa: E402
from controllerd.scheduler import LeaseScheduler  # noqa: E402
from controllerd.store.sqlite import SqliteStore  # noqa: E402
from tests.bench.bench_controller import table  # noqa: E402
from tests.unit.worktrace import count_lines  # noqa: E402

NS = "bench"
NOW = 1_000_000.0
BOARDS = 10


def selectors(count: int) -> list[str]:
    """`count` distinct selectors, all matching some exporters."""
    shapes = ["pool=all", "!broken", "pool=all,!broken"]
    shapes += [f"board=b{i}" for i in range(BOARDS)]
    shapes += [f"board in (b{i},b{(i + 1) % BOARDS})" for i in range(BOARDS)]
    return shapes[:count]


async def populate(
    store: SqliteStore, scheduler: LeaseScheduler, exporters: int, pending: int, kinds: int
) -> None:
    await store.save_policy(AccessPolicy(NS, "everyone", priority=0))
    await store.save_policy(AccessPolicy(NS, "team-a", "pool=all", "team=a", priority=10))
    await store.save_client(Client(NS, "holder"))
    for i in range(exporters):
        await store.save_exporter(
            Exporter(
                NS,
                f"e{i:04d}",
                labels={"pool": "all", "board": f"b{i % BOARDS}"},
                status=ExporterStatus.AVAILABLE,
                last_seen=NOW,
                registered=True,
            )
        )
        held = Lease(NS, f"held-{i:04d}", "holder", exporter_name=f"e{i:04d}", duration=86400.0)
        await scheduler.submit(held)  # granted at once: every exporter busy
    clients = max(1, pending // 10)
    for i in range(clients):
        await store.save_client(Client(NS, f"c{i:04d}", labels={"team": "a" if i % 2 else "b"}))
    shapes = selectors(kinds)
    for i in range(pending):
        lease = Lease(
            NS, f"p{i:05d}", f"c{i % clients:04d}", selector=shapes[i % len(shapes)], duration=600.0
        )
        lease.created = NOW
        await store.create_lease(lease)  # straight into the store: no pass per lease while filling


async def measure(exporters: int, pending: int, kinds: int, runs: int, profile: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="jsbs-") as directory:
        store = SqliteStore(os.path.join(directory, "c.db"))
        scheduler = LeaseScheduler(store, Hub(), clock=lambda: NOW)
        scheduler.max_pending = 10**9  # the benchmark queues more than any one client may
        try:
            await populate(store, scheduler, exporters, pending, kinds)
            await scheduler.poke()  # first pass writes every Pending condition; measure the steady state
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                await scheduler.poke()
                times.append(time.perf_counter() - started)
            lines = await count_lines(scheduler.poke)
            if profile:
                await _profile(scheduler.poke)
        finally:
            store.close()
    return statistics.median(times), lines


async def _profile(call: Callable[[], Awaitable[Any]]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    await call()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(18)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exporters", type=int, default=100)
    parser.add_argument("--pending", default="250,500,1000,2000", help="comma-separated pending lease counts")
    parser.add_argument(
        "--selectors", type=int, default=8, help="distinct selectors among the pending leases"
    )
    parser.add_argument("--runs", type=int, default=5, help="passes timed per row (median)")
    parser.add_argument("--profile", type=int, default=0, help="cProfile one pass at this many pending")
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )  # no grant lines
    rows = []
    for pending in [int(p) for p in args.pending.split(",")]:
        seconds, lines = asyncio.run(measure(args.exporters, pending, args.selectors, args.runs, False))
        rows.append((str(pending), f"{seconds * 1000:.1f} ms", f"{lines:,}"))
    if args.profile:
        asyncio.run(measure(args.exporters, args.profile, args.selectors, 1, True))
    title = (
        f"scheduler pass, {args.exporters} exporters (all leased), {args.selectors} distinct selectors, "
        f"2 policies ({os.cpu_count()} CPUs)"
    )
    table(title, ("pending leases", "one pass (median)", "lines executed"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
