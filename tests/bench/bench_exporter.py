"""Exporter benchmark: unary DriverCall latency, byte-stream throughput, cold start, RSS, CLI.

    .venv/bin/python tests/bench/bench_exporter.py [--quick] [--json FILE]
    .venv/bin/python tests/bench/bench_exporter.py --upstream [--quick] [--repeat N]

`--upstream` runs bench_exporter_vs_upstream.py instead: our exporterd, upstream 0.9's exporter
and a bare grpc.aio server side by side, with a wire-level client shaped like upstream's.

Starts real `jumpstarter-exporterd` processes on temporary unix sockets (config:
power.mock, network.echo, network.discard) and prints a markdown table with the
targets next to each figure. Not a pytest test (bench_*.py is not collected).
All child processes are stopped on any exit (normal, exception, SIGINT/SIGTERM/SIGHUP),
and are asked to die with us by PR_SET_PDEATHSIG if we are killed outright.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# We fork children with a preexec_fn (PR_SET_PDEATHSIG); grpcio 1.8x's fork handlers then abort about
# 1 child in 150 before it execs (epoll_wait EBADF, grpc/grpc#43055). The children exec at once, so this
# process needs no fork support; set before grpc loads, and kept out of the children's environment.
FORK_SUPPORT_OFF = "GRPC_ENABLE_FORK_SUPPORT" not in os.environ
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402

from jumpstarter.v1 import jumpstarter_pb2  # noqa: E402

MiB = 1024 * 1024
KiB = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BIN = os.path.dirname(sys.executable)
SERVICE = "/jumpstarter.v1.ExporterService/"
NAME_LABEL = "jumpstarter.dev/name"

CONFIG = """\
apiVersion: jumpstarter.dev/v1alpha1
kind: ExporterConfig
metadata:
  namespace: bench
  name: bench
description: benchmark board
export:
  power:
    type: power.mock
  echo:
    type: network.echo
  discard:
    type: network.discard
"""

# -- process bookkeeping: nothing we start outlives us --------------------------------------

_children: list[subprocess.Popen[bytes]] = []
#: Environment of the processes we time. By default they get a private bytecode cache
#: (PYTHONPYCACHEPREFIX in the temp dir, warmed by an unmeasured first start), like an
#: installed package whose .pyc files exist; `--no-pyc` keeps the caller's environment.
CHILD_ENV: dict[str, str] = {
    k: v for k, v in os.environ.items() if not (FORK_SUPPORT_OFF and k == "GRPC_ENABLE_FORK_SUPPORT")
}
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    kw.setdefault("env", CHILD_ENV)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **kw)
    _children.append(process)
    return process


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ValueError):
        _children.remove(process)


def _cleanup() -> None:
    for process in list(_children):
        stop(process)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


atexit.register(_cleanup)
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)

# -- /proc helpers ----------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of all threads of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of `pid` to its current RSS (proc(5) clear_refs "5"); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rollup_kib(pid: int, key: str) -> int | None:
    """A field of /proc/PID/smaps_rollup (Pss, Shared_Clean, ...), None where unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[7])  # field 10 of proc(5)


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class RssSampler:
    """Samples VmRSS of `pid` in a background thread; `.peak_kib` is the largest seen.

    `take()` returns the peak since the previous `take()` (also from VmHWM when it
    could be reset) and starts a new interval.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._interval_kib = 0
        self._hwm_ok = reset_peak_rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                rss = status_kib(self.pid, "VmRSS")
                self.peak_kib = max(self.peak_kib, rss)
                self._interval_kib = max(self._interval_kib, rss)
            self._stop.wait(self.interval)

    def take(self) -> int:
        peak = self._interval_kib
        if self._hwm_ok:
            peak = max(peak, status_kib(self.pid, "VmHWM"))
            reset_peak_rss(self.pid)
        self.peak_kib = max(self.peak_kib, peak)
        self._interval_kib = status_kib(self.pid, "VmRSS")
        return peak

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def cpu_meter(pid: int) -> Iterator[dict[str, float]]:
    """Exporter CPU seconds (from /proc ticks) and our own process CPU seconds over a block."""
    out: dict[str, float] = {}
    f0 = minor_faults(pid)
    e0 = cpu_ticks(pid)
    c0 = os.times()
    w0 = time.perf_counter()
    yield out
    wall = time.perf_counter() - w0
    c1 = os.times()
    out["wall"] = wall
    out["exporter_cpu"] = (cpu_ticks(pid) - e0) / CLK_TCK
    out["exporter_minflt"] = minor_faults(pid) - f0
    out["client_cpu"] = (c1.user - c0.user) + (c1.system - c0.system)


# -- exporterd ------------------------------------------------------------------------------


def exporterd_argv(config: str, socket: str) -> list[str]:
    script = os.path.join(BIN, "jumpstarter-exporterd")
    if os.path.exists(script):
        return [script, "--config", config, "--socket", socket]
    return [sys.executable, "-m", "exporterd.main", "--config", config, "--socket", socket]


def raw_report(path: str, timeout: float = 1.0) -> jumpstarter_pb2.GetReportResponse:
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        stub = channel.unary_unary(
            SERVICE + "GetReport",
            request_serializer=lambda _: b"",
            response_deserializer=jumpstarter_pb2.GetReportResponse.FromString,
        )
        return stub(None, timeout=timeout, wait_for_ready=False)
    finally:
        channel.close()


def start_exporterd(
    config: str, socket: str, log_path: str, timeout: float = 20.0
) -> tuple[subprocess.Popen[bytes], float, jumpstarter_pb2.GetReportResponse]:
    """Start exporterd; returns (process, seconds from Popen to the first answered GetReport, report).

    Polls the socket path every 0.5 ms, then GetReport on a fresh channel until it answers.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket)
    with open(log_path, "ab") as log:
        t0 = time.perf_counter()
        process = spawn(exporterd_argv(config, socket), stdout=log, stderr=subprocess.STDOUT)
    deadline = t0 + timeout
    while True:
        if process.poll() is not None:
            with open(log_path, errors="replace") as handle:
                tail = handle.read()[-2000:]
            raise RuntimeError(f"exporterd exited with {process.returncode}:\n{tail}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"exporterd did not answer within {timeout:g}s")
        if os.path.exists(socket):
            try:
                report = raw_report(socket)
                return process, time.perf_counter() - t0, report
            except grpc.RpcError:
                pass
        else:
            time.sleep(0.0005)


def uuid_of(report: jumpstarter_pb2.GetReportResponse, name: str) -> str:
    for entry in report.reports:
        if entry.labels.get(NAME_LABEL) == name:
            return entry.uuid
    raise KeyError(name)


# -- benchmarks -------------------------------------------------------------------------------


def latency_stats(samples_ns: list[int], wall: float) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "calls": n,
        "calls_per_s": n / wall,
        "p50_ms": ordered[n // 2] / 1e6,
        "p99_ms": ordered[min(n - 1, int(n * 0.99))] / 1e6,
        "max_ms": ordered[-1] / 1e6,
    }


def timed_loop(fn: Callable[[], Any], warmup: int, count: int) -> tuple[list[int], float]:
    for _ in range(warmup):
        fn()
    samples = [0] * count
    clock = time.perf_counter_ns
    w0 = clock()
    for i in range(count):
        t = clock()
        fn()
        samples[i] = clock() - t
    return samples, (clock() - w0) / 1e9


def bench_unary_bare(socket: str, power: str, warmup: int, count: int, pid: int) -> dict[str, float]:
    channel = grpc.insecure_channel(f"unix:{socket}")
    try:
        stub = channel.unary_unary(
            SERVICE + "DriverCall",
            request_serializer=jumpstarter_pb2.DriverCallRequest.SerializeToString,
            response_deserializer=jumpstarter_pb2.DriverCallResponse.FromString,
        )
        request = jumpstarter_pb2.DriverCallRequest(uuid=power, method="on")
        for _ in range(warmup):
            stub(request)
        with cpu_meter(pid) as cpu:
            samples, wall = timed_loop(lambda: stub(request), 0, count)
        stats = latency_stats(samples, wall)
        stats["exporter_us_per_call"] = cpu["exporter_cpu"] / count * 1e6
        stats["client_us_per_call"] = cpu["client_cpu"] / count * 1e6
        return stats
    finally:
        channel.close()


def bench_unary_library(socket: str, warmup: int, count: int, pid: int) -> dict[str, float]:
    import jumpstarter

    with jumpstarter.connect(socket) as board:
        on = board.power.on
        for _ in range(warmup):
            on()
        with cpu_meter(pid) as cpu:
            samples, wall = timed_loop(on, 0, count)
    stats = latency_stats(samples, wall)
    stats["exporter_us_per_call"] = cpu["exporter_cpu"] / count * 1e6
    stats["client_us_per_call"] = cpu["client_cpu"] / count * 1e6
    return stats


def bench_echo(socket: str, total: int, chunk_size: int, pid: int) -> dict[str, float]:
    import jumpstarter

    chunk = os.urandom(chunk_size)
    count = total // chunk_size
    expected = count * chunk_size
    failure: list[BaseException] = []
    with jumpstarter.connect(socket) as board, board.echo.stream() as stream:

        def sender() -> None:
            try:
                for _ in range(count):
                    stream.send(chunk)
                stream.send_eof()
            except BaseException as exc:  # reported below
                failure.append(exc)

        received = 0
        with cpu_meter(pid) as cpu:
            thread = threading.Thread(target=sender, daemon=True, name="echo-sender")
            thread.start()
            while received < expected:
                data = stream.receive()
                if not data:
                    break
                received += len(data)
            thread.join()
        if failure:
            raise failure[0]
        if received != expected:
            raise AssertionError(f"echo: received {received} bytes, sent {expected}")
        # the echo ends its side after our EOF
        if stream.receive() != b"":
            raise AssertionError("echo: data after the expected byte count")
    return _throughput(expected, cpu)


def bench_discard(socket: str, total: int, chunk_size: int, pid: int) -> dict[str, float]:
    import jumpstarter

    chunk = os.urandom(chunk_size)
    count = total // chunk_size
    with jumpstarter.connect(socket) as board, board.discard.stream() as stream:
        with cpu_meter(pid) as cpu:
            for _ in range(count):
                stream.send(chunk)
            stream.send_eof()
            tail = stream.receive()  # b"" once the exporter has taken everything and ended its side
        if tail != b"":
            raise AssertionError(f"discard: unexpected data {tail[:32]!r}")
    return _throughput(count * chunk_size, cpu)


def _throughput(nbytes: int, cpu: dict[str, float]) -> dict[str, float]:
    return {
        "bytes": nbytes,
        "seconds": cpu["wall"],
        "mb_per_s": nbytes / 1e6 / cpu["wall"],
        "exporter_cpu_pct": 100 * cpu["exporter_cpu"] / cpu["wall"],
        "client_cpu_pct": 100 * cpu["client_cpu"] / cpu["wall"],
        "exporter_minor_faults": cpu["exporter_minflt"],
    }


def bench_cli(socket: str, runs: int) -> dict[str, float]:
    script = os.path.join(BIN, "jumpstarter")
    argv = [script, "--host", socket, "power", "on"]
    env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("JUMPSTARTER_")}
    subprocess.run(
        argv, check=True, stdin=subprocess.DEVNULL, env=env, capture_output=True
    )  # page cache warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
        if result.returncode != 0:
            raise RuntimeError(f"CLI failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def bench_startup_reference(runs: int) -> dict[str, float]:
    """Context for cold start and CLI: bare interpreter start and `import grpc` on this machine."""
    out = {}
    for name, code in (("python_s", "pass"), ("import_grpc_s", "import grpc")):
        times = []
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=CHILD_ENV, stdin=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times[1:])
    return out


NOOP_SERVER = """
import asyncio, sys, grpc
async def call(request, context):
    return b""
async def main():
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(call)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("jumpstarter.v1.ExporterService", {"DriverCall": handler}),))
    server.add_insecure_port("unix:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


def _listening(path: str) -> bool:
    import socket as socketlib

    probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def bench_noop_server(workdir: str, warmup: int, count: int) -> dict[str, float]:
    """The ceiling on this machine: a grpc.aio server whose DriverCall does nothing, same bare stub."""
    socket = os.path.join(workdir, "noop.sock")
    process = spawn([sys.executable, "-c", NOOP_SERVER, socket])
    try:
        deadline = time.perf_counter() + 20
        while not _listening(socket):  # the file appears at bind(), before listen()
            if process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("the no-op gRPC server did not start")
            time.sleep(0.001)
        return bench_unary_bare(socket, "none", warmup, count, process.pid)
    finally:
        stop(process)


# -- report -----------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: str, target: str = "", ok: bool | None = None, note: str = "") -> None:
        self.rows.append(Row(metric, value, target, ok, note))

    def markdown(self) -> str:
        lines = ["| Metric | Result | Target | OK | Notes |", "|---|---:|---|:-:|---|"]
        for r in self.rows:
            mark = "" if r.ok is None else ("✅" if r.ok else "❌")
            lines.append(f"| {r.metric} | {r.value} | {r.target} | {mark} | {r.note} |")
        return "\n".join(lines)


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from google import protobuf

    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--upstream" in argv:  # the side-by-side script has its own options
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_exporter_vs_upstream.py")
        os.execv(sys.executable, [sys.executable, script, *(a for a in argv if a != "--upstream")])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    parser.add_argument(
        "--no-pyc",
        action="store_true",
        help="time the processes with the caller's environment as is (no private bytecode cache)",
    )
    args = parser.parse_args(argv)

    if args.quick:
        warmup, calls, stream_total, cold_runs, cli_runs = 20, 200, 16 * MiB, 2, 2
    else:
        warmup, calls, stream_total, cold_runs, cli_runs = 200, 2000, 256 * MiB, 5, 10

    workdir = tempfile.mkdtemp(prefix="jmp-bench-")
    pyc_note = "caller's environment as is"
    if not args.no_pyc:
        CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        CHILD_ENV["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")
        pyc_note = "private bytecode cache, warmed first (like an installed package)"
    info = machine()
    print("## Exporter benchmark" + (" (--quick)" if args.quick else ""))
    print()
    print(f"- machine: nproc={info['nproc']}, CPU: {info['cpu']}, kernel {info['kernel']}")
    print(f"- Python {info['python']}, grpcio {info['grpcio']}, protobuf {info['protobuf']}")
    print("- 1 MB = 10^6 bytes; MiB = 2^20 bytes; latencies are wall time per call, measured in this process")
    print(f"- child processes: {pyc_note}; load average at start: {os.getloadavg()[0]:.2f}")
    print(flush=True)

    results = Results()
    results.raw["machine"] = info
    config = os.path.join(workdir, "bench.yaml")
    with open(config, "w") as handle:
        handle.write(CONFIG)
    log_path = os.path.join(workdir, "exporterd.log")
    try:
        # 4. cold start (separate processes, so the main one is not disturbed)
        process, _, _ = start_exporterd(
            config, os.path.join(workdir, "warm.sock"), log_path
        )  # fills the caches
        stop(process)
        starts = []
        for i in range(cold_runs):
            process, seconds, _ = start_exporterd(config, os.path.join(workdir, f"cold{i}.sock"), log_path)
            starts.append(seconds)
            stop(process)
        results.raw["cold_start_s"] = starts

        # the exporterd under test
        socket = os.path.join(workdir, "bench.sock")
        exporter, _, report = start_exporterd(config, socket, log_path)
        pid = exporter.pid
        power = uuid_of(report, "power")
        time.sleep(0.2)  # settle before the idle reading
        rss_idle = status_kib(pid, "VmRSS")
        pss_idle = rollup_kib(pid, "Pss")
        shared_idle = rollup_kib(pid, "Shared_Clean")

        # 1 + 2. unary calls
        bare = bench_unary_bare(socket, power, warmup, calls, pid)
        noop = bench_noop_server(workdir, warmup, calls)
        results.raw["unary_noop_grpc_aio_server"] = noop
        lib = bench_unary_library(socket, warmup, calls, pid)
        results.raw["unary_bare"] = bare
        results.raw["unary_library"] = lib
        rss_after_unary = status_kib(pid, "VmRSS")

        # 3 + 5. byte streams, with RSS sampling
        streams: dict[str, dict[str, float]] = {}
        with RssSampler(pid) as sampler:
            for chunk in (MiB, 64 * KiB):
                label = "1 MiB" if chunk == MiB else "64 KiB"
                sampler.take()
                streams[f"echo {label}"] = bench_echo(socket, stream_total, chunk, pid)
                streams[f"echo {label}"]["peak_rss_kib"] = sampler.take()
                streams[f"discard {label}"] = bench_discard(socket, stream_total, chunk, pid)
                streams[f"discard {label}"]["peak_rss_kib"] = sampler.take()
        rss_peak = max(s["peak_rss_kib"] for s in streams.values())
        results.raw["streams"] = streams
        results.raw["rss_kib"] = {
            "idle": rss_idle,
            "idle_pss": pss_idle,
            "idle_shared_clean": shared_idle,
            "after_unary": rss_after_unary,
            "peak": rss_peak,
            "sampled_peak": sampler.peak_kib,
        }

        # 6. CLI
        cli = bench_cli(socket, cli_runs)
        results.raw["cli"] = cli
        reference = bench_startup_reference(cli_runs)
        results.raw["startup_reference"] = reference

        stop(exporter)
    finally:
        _cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    # -- table ------------------------------------------------------------------------------
    def unary_rows(name: str, s: dict[str, float], target_rate: int) -> None:
        results.add(
            f"DriverCall {name}: calls/s ({int(s['calls'])} seq. power.on)",
            f"{s['calls_per_s']:,.0f}",
            f"≥ {target_rate:,}",
            s["calls_per_s"] >= target_rate,
        )
        results.add(
            f"DriverCall {name}: p50 / p99 latency",
            f"{s['p50_ms']:.3f} / {s['p99_ms']:.3f} ms",
            "p99 ≤ 1.1 ms",
            s["p99_ms"] <= 1.1,
            f"max {s['max_ms']:.2f} ms",
        )

    unary_rows("bare gRPC stub", bare, 1700)
    unary_rows("client library", lib, 1600)
    results.add(
        "reference: no-op grpc.aio server, bare stub",
        f"{noop['calls_per_s']:,.0f} calls/s",
        "",
        None,
        f"p50 {noop['p50_ms']:.3f} / p99 {noop['p99_ms']:.3f} ms; server CPU"
        f" {noop['exporter_us_per_call']:.0f} µs/call: the ceiling of this machine",
    )
    results.add(
        "exporterd CPU per library call",
        f"{lib['exporter_us_per_call']:.0f} µs",
        "",
        None,
        f"bare stub: {bare['exporter_us_per_call']:.0f} µs; client CPU {lib['client_us_per_call']:.0f}"
        f" µs/call (bare {bare['client_us_per_call']:.0f})",
    )
    size = f"{stream_total // MiB} MiB"
    for name, s in streams.items():
        kind, chunk_label = name.split(" ", 1)
        target = 420 if kind == "echo" else 700
        what = "echo round trip" if kind == "echo" else "one-way into discard"
        primary = chunk_label == "1 MiB"
        results.add(
            f"{what}, {size}, {chunk_label} chunks",
            f"{s['mb_per_s']:,.0f} MB/s",
            f"≥ {target} MB/s" if primary else f"(≥ {target} MB/s at 1 MiB)",
            s["mb_per_s"] >= target if primary else None,
            f"{s['seconds']:.2f} s; exporterd CPU {s['exporter_cpu_pct']:.0f} %, "
            f"client CPU {s['client_cpu_pct']:.0f} %; exporterd peak RSS {s['peak_rss_kib'] / 1024:.0f} MiB",
        )
    med = statistics.median(starts)
    results.add(
        f"exporterd cold start (median of {len(starts)})",
        f"{med:.3f} s",
        "≤ 0.2 s",
        med <= 0.2,
        f"min {min(starts):.3f} s, max {max(starts):.3f} s",
    )
    idle = rss_idle / 1024
    peak = rss_peak / 1024
    results.add(
        "exporterd RSS idle",
        f"{idle:.1f} MiB",
        "≤ 40 MiB",
        idle <= 40,
        f"after unary runs {rss_after_unary / 1024:.1f} MiB"
        + (
            f"; PSS {pss_idle / 1024:.1f} MiB, of RSS {shared_idle / 1024:.1f} MiB shared clean (mapped .so files)"
            if pss_idle is not None and shared_idle is not None
            else ""
        ),
    )
    results.add(
        "exporterd RSS peak under stream load",
        f"{peak:.1f} MiB",
        "≤ 40 MiB",
        peak <= 40,
        "max of the stream tests (VmHWM reset per test + VmRSS sampled every 20 ms)",
    )
    results.add(
        f"CLI `jumpstarter --host SOCK power on` (median of {cli_runs})",
        f"{cli['median_s']:.3f} s",
        "≤ 0.25 s",
        cli["median_s"] <= 0.25,
        f"min {cli['min_s']:.3f} s, max {cli['max_s']:.3f} s",
    )
    results.add(
        "reference: `python -c pass` / `python -c 'import grpc'`",
        f"{reference['python_s']:.3f} / {reference['import_grpc_s']:.3f} s",
        "",
        None,
        "the floor under cold start and CLI on this machine",
    )

    print(results.markdown())
    failed = [r.metric for r in results.rows if r.ok is False]
    print()
    print(f"{len(failed)} figure(s) miss their target" + (": " + "; ".join(failed) if failed else ""))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results.raw, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
