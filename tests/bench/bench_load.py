"""Load benchmark: a simulated lab against one controllerd for minutes, watching latency, CPU and memory.

    .venv/bin/python tests/bench/bench_load.py [--duration 600] [--exporters 500] [--clients 200] [--quick]

Starts `jumpstarter-controllerd` (TLS on loopback, SQLite store in a temporary directory), creates
EXPORTERS exporters and CLIENTS clients through its admin socket, then runs them as real gRPC peers
(tests/bench/load_peers.py) in two worker processes: one with every exporter (Register, a Status
stream, Listen + ReportStatus as leases come and go, a heartbeat every 10 s), brought online first;
then one with every client looping for DURATION seconds: CreateLease, GetLease until Ready, hold
1-4 s (a quarter extend the lease with UpdateLease), DeleteLease, think 0.5-2 s.

Exporters carry `board=b0..b9`; the first HOT of them also `hot=yes`. Most clients ask for one
board (about 18 clients per 50 exporters: usually granted at once); one in ten asks for `hot=yes`
and queues behind the others. Grant latency is CreateLease sent → Ready seen by the client
(GetLease polled from 20 ms, backing off to 250 ms), reported separately for the two kinds.

Every SAMPLE seconds controllerd's CPU time (/proc/PID/stat) and RSS/PSS (/proc/PID/smaps_rollup)
are read, with the workers' CPU and the load average, and one ReportStatus of a probe exporter
outside the simulation is timed (how long any exporter's call waits now). Prints per-BUCKET
(default a minute) tables, operations with latency and errors by code, controllerd's warning/error
log lines, and whether memory stayed flat (the last bucket's RSS within MARGIN of the second's).
A benchmark: nothing is asserted.
Not a pytest test (bench_*.py is not collected).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc  # noqa: E402
from tests.bench.bench_controller import admin_create, ms, table  # noqa: E402
from tests.bench.bench_exporter import CLK_TCK, cpu_ticks, rollup_kib  # noqa: E402
from tests.bench.load_peers import Record, client_worker, exporter_worker  # noqa: E402
from tests.integration.central import Central, Identity  # noqa: E402

NS = "load"
BOARDS = 10
HOT = 5  # exporters labelled hot=yes
HOT_SHARE = 10  # one client in this many asks for hot=yes
MARGIN = 0.05  # "flat": the last bucket's RSS within 5 % of the second bucket's


@dataclass
class Sample:
    t: float
    ctrl_ticks: int
    gen_ticks: int
    rss: int  # KiB
    pss: int  # KiB
    load1: float
    probe: float  # seconds for one ReportStatus of an idle exporter of its own (-1: failed)


def loadavg() -> list[str]:
    with open("/proc/loadavg") as handle:
        return handle.read().split()[:3]


class Probe:
    """An exporter outside the simulation (labels no lease asks for) whose ReportStatus is timed."""

    def __init__(self, central: Central) -> None:
        self.identity = admin_create(central, "exporter", NS, ["probe"], board="probe")[0]
        self.channel = central.channel()
        self.stub = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel)

    def __call__(self) -> float:
        request = jumpstarter_pb2.ReportStatusRequest(status=common_pb2.EXPORTER_STATUS_AVAILABLE)
        started = time.perf_counter()
        try:
            self.stub.ReportStatus(request, metadata=self.identity.metadata(), timeout=60)
        except grpc.RpcError:
            return -1.0
        return time.perf_counter() - started


def sample(pid: int, workers: list[int], probe: Probe) -> Sample:
    gen = 0
    for worker in workers:
        try:
            gen += cpu_ticks(worker)
        except OSError:
            pass  # a worker that already finished
    load1 = float(loadavg()[0])
    t = time.time()
    ctrl, rss, pss = cpu_ticks(pid), rollup_kib(pid, "Rss") or 0, rollup_kib(pid, "Pss") or 0
    return Sample(t, ctrl, gen, rss, pss, load1, probe())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def spread(values: list[float]) -> tuple[str, str, str, str]:
    if not values:
        return ("-", "-", "-", "-")
    return (ms(pct(values, 0.5)), ms(pct(values, 0.9)), ms(pct(values, 0.99)), ms(max(values)))


def create_lab(
    central: Central, exporters: int, clients: int
) -> tuple[list[Identity], list[tuple[Identity, str, bool]]]:
    """Identities through the admin socket: exporters grouped by their labels, clients with a selector each."""
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for i in range(exporters):
        labels = {"board": f"b{i % BOARDS}", **({"hot": "yes"} if i < HOT else {})}
        groups.setdefault(tuple(sorted(labels.items())), []).append(f"e{i:04d}")
    made: dict[str, Identity] = {}
    for group, names in groups.items():
        made.update({e.name: e for e in admin_create(central, "exporter", NS, names, **dict(group))})
    crowd = admin_create(central, "client", NS, [f"c{i:03d}" for i in range(clients)])
    specs = [
        (c, "hot=yes", True) if i % HOT_SHARE == 0 else (c, f"board=b{i % BOARDS}", False)
        for i, c in enumerate(crowd)
    ]
    return [made[f"e{i:04d}"] for i in range(exporters)], specs


def log_levels(text: str) -> tuple[Counter[tuple[str, str]], int]:
    """controllerd's JSON log: (level, event) counts at warning and above, and lines that are not JSON."""
    out: Counter[tuple[str, str]] = Counter()
    other = 0
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            other += 1
            continue
        level = str(entry.get("level", ""))
        if level in ("warning", "error", "critical", "exception"):
            out[(level, str(entry.get("event", ""))[:70])] += 1
    return out, other


def run(args: argparse.Namespace, central: Central) -> tuple[list[Sample], float, Record, Record, float]:
    assert central.controller is not None
    pid = central.controller.pid
    started = time.perf_counter()
    exporters, specs = create_lab(central, args.exporters, args.clients)
    probe = Probe(central)
    created = time.perf_counter() - started
    print(f"created {len(exporters)} exporters and {len(specs)} clients in {created:.1f} s", flush=True)

    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    ew = ctx.Process(
        target=exporter_worker, args=(central.endpoint, central.ca, exporters, ready, stop, out), daemon=True
    )
    ew.start()
    cw: BaseProcess | None = None
    try:
        started = time.perf_counter()
        while not ready.wait(1):
            if not ew.is_alive() or time.perf_counter() - started > 600:
                raise SystemExit("the exporter worker did not bring every exporter online")
        print(f"{len(exporters)} exporters online in {time.perf_counter() - started:.1f} s", flush=True)

        t0 = time.time()
        end = t0 + args.duration
        cw = ctx.Process(
            target=client_worker, args=(central.endpoint, central.ca, specs, end, out), daemon=True
        )
        cw.start()
        samples = [sample(pid, [ew.pid or 0, cw.pid or 0], probe)]
        while time.time() < end:
            time.sleep(min(args.sample, max(0.0, end - time.time())))
            samples.append(sample(pid, [ew.pid or 0, cw.pid or 0], probe))
            if central.controller.poll() is not None:
                raise SystemExit(f"controllerd exited with {central.controller.returncode}")
        records = {}
        first = out.get(timeout=300)  # the clients finish their held leases, then report
        records[first.kind] = first
        stop.set()
        second = out.get(timeout=120)
        records[second.kind] = second
        return samples, t0, records["exporters"], records["clients"], created
    finally:  # on an error too: stop both workers, so none is left running or blocks the exit
        stop.set()
        for worker in (cw, ew):
            if worker is not None:
                worker.join(30)
                if worker.is_alive():
                    worker.terminate()
                    worker.join(10)


def report(
    args: argparse.Namespace, samples: list[Sample], t0: float, exp: Record, cli: Record, log: str
) -> None:
    width = args.bucket
    buckets = max(1, int(round(args.duration / width)))

    def bucket(t: float) -> int:
        return min(buckets - 1, max(0, int((t - t0) // width)))

    # the last sample at or before each bucket's end; samples[0] is at t0
    ends = [
        max((s for s in samples if s.t <= t0 + (b + 1) * width + 1), key=lambda s: s.t)
        for b in range(buckets)
    ]
    calls = exp.calls + cli.calls
    rows = []
    for b in range(buckets):
        pool = [lat for t, lat, hot, _ in cli.grants if not hot and bucket(t) == b]
        hot = [lat for t, lat, h, _ in cli.grants if h and bucket(t) == b]
        errors = sum(1 for t, _, code, _ in calls if code != "OK" and bucket(t) == b)
        before = samples[0] if b == 0 else ends[b - 1]
        span = max(1e-9, ends[b].t - before.t)
        reports = [
            sec for t, op, code, sec in exp.calls if op == "ReportStatus" and code == "OK" and bucket(t) == b
        ]
        probes = [p.probe for p in samples[1:] if bucket(p.t) == b and p.t <= t0 + args.duration]
        rows.append(
            (
                f"{b * width:.0f}-{(b + 1) * width:.0f} s",
                str(len(pool)),
                *spread(pool),
                str(len(hot)),
                ms(pct(hot, 0.5)) if hot else "-",
                ms(pct(hot, 0.99)) if hot else "-",
                str(errors),
                ms(pct(reports, 0.5)) if reports else "-",
                ms(max(probes)) if probes else "-",
                f"{(ends[b].ctrl_ticks - before.ctrl_ticks) / CLK_TCK / span * 100:.0f} %",
                f"{(ends[b].gen_ticks - before.gen_ticks) / CLK_TCK / span * 100:.0f} %",
                f"{ends[b].rss / 1024:.1f}",
                f"{ends[b].pss / 1024:.1f}",
                f"{ends[b].load1:.2f}",
            )
        )
    pool = [lat for _, lat, hot, _ in cli.grants if not hot]
    hot = [lat for _, lat, h, _ in cli.grants if h]
    last, span = samples[-1], max(1e-9, samples[-1].t - samples[0].t)
    rows.append(
        (
            "all",
            str(len(pool)),
            *spread(pool),
            str(len(hot)),
            ms(pct(hot, 0.5)) if hot else "-",
            ms(pct(hot, 0.99)) if hot else "-",
            str(sum(1 for _, _, code, _ in calls if code != "OK")),
            ms(
                pct(
                    [sec for _, op, code, sec in exp.calls if op == "ReportStatus" and code == "OK"] or [0],
                    0.5,
                )
            ),
            ms(max(p.probe for p in samples)),
            f"{(last.ctrl_ticks - samples[0].ctrl_ticks) / CLK_TCK / span * 100:.0f} %",
            f"{(last.gen_ticks - samples[0].gen_ticks) / CLK_TCK / span * 100:.0f} %",
            f"peak {max(s.rss for s in samples) / 1024:.1f}",
            f"peak {max(s.pss for s in samples) / 1024:.1f}",
            f"{sum(s.load1 for s in samples) / len(samples):.2f} avg",
        )
    )
    immediate = sum(1 for *_, hot, now in cli.grants if not hot and now)
    table(
        f"controllerd under load: {args.exporters} exporters, {args.clients} clients, {args.duration:.0f} s "
        f"({os.cpu_count()} CPUs shared; `board` leases granted at once: {immediate} of {len(pool)})",
        (
            "window",
            "board grants",
            "p50",
            "p90",
            "p99",
            "max",
            "hot grants",
            "hot wait p50",
            "hot wait p99",
            "errors",
            "exporters' ReportStatus p50",
            "probe ReportStatus max",
            "controllerd CPU",
            "load gen CPU",
            "RSS MiB",
            "PSS MiB",
            "load avg 1m",
        ),
        rows,
    )

    ops: dict[str, Counter[str]] = {}
    took: dict[str, list[float]] = {}
    for _, op, code, seconds in calls:
        ops.setdefault(op, Counter())[code] += 1
        if code == "OK" and seconds:
            took.setdefault(op, []).append(seconds)
    table(
        "operations (unary calls: latency of the successful ones; grant: a lease that ended ungranted "
        "or was still queued at the end)",
        ("operation", "OK", "p50", "p99", "errors by code"),
        [
            (
                op,
                str(c.get("OK", 0)),
                *spread(took.get(op, []))[0:3:2],
                ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "OK") or "-",
            )
            for op, c in sorted(ops.items())
        ],
    )
    refused = [s for _, op, code, s in calls if op == "Listen" and code != "OK"]
    if refused:
        print(
            "\nListen refused, from leased=true to the refusal p50/p90/p99/max: "
            + " / ".join(spread(refused))
        )

    levels, other = log_levels(log)
    table(
        f"controllerd log lines at warning and above ({len(log.splitlines())} lines in all, {other} not JSON)",
        ("level", "event", "count"),
        [(lvl, ev, str(n)) for (lvl, ev), n in levels.most_common(15)] or [("-", "none", "0")],
    )

    second, final = ends[min(1, buckets - 1)], ends[-1]
    growth = (final.rss - second.rss) / max(1, second.rss)
    verdict = "flat" if abs(growth) <= MARGIN else ("GROWING" if growth > 0 else "shrinking")
    print(
        f"\nmemory: RSS {second.rss / 1024:.1f} MiB at the end of window 2, {final.rss / 1024:.1f} MiB at the end "
        f"({growth * 100:+.1f} %; PSS {second.pss / 1024:.1f} → {final.pss / 1024:.1f} MiB): {verdict} "
        f"(margin ±{MARGIN * 100:.0f} %)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds the clients run (default 600)")
    parser.add_argument("--exporters", type=int, default=500)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--bucket", type=float, default=60.0, help="seconds per table row (default 60)")
    parser.add_argument("--sample", type=float, default=3.0, help="seconds between /proc samples")
    parser.add_argument("--quick", action="store_true", help="a 30 s smoke run in 10 s rows")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (controllerd.log)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.bucket = 30.0, 10.0
    if args.exporters < HOT or args.clients < 1 or args.duration < args.bucket:
        parser.error(f"need at least {HOT} exporters, one client, and --duration of at least one --bucket")

    central = Central(tempfile.mkdtemp(prefix="jscl-", dir="/tmp"), {"metrics": None})
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    load_before = loadavg()
    try:
        central.start_controller()
        samples, t0, exp, cli, _ = run(args, central)
        log = central.log("controllerd")
    finally:
        central.close()
        if args.keep:
            print(f"kept {central.directory}")
        else:
            shutil.rmtree(central.directory, ignore_errors=True)
    report(args, samples, t0, exp, cli, log)
    load_after = loadavg()
    print(f"load average (1/5/15 min) before: {' '.join(load_before)}; after: {' '.join(load_after)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
