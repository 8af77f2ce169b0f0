"""Router benchmark: throughput and added latency of routerd against a direct unix-socket stream.

    .venv/bin/python tests/bench/bench_router.py [--quick] [--size-mib 256] [--streams 100] [--workers N]

Runs a real `jumpstarter-routerd` (TLS on loopback) and, in the same run, a
direct gRPC RouterService.Stream server on a unix socket. The far end (sink or
echo) always lives in a separate process; the sender is this process. Prints a
markdown table. Not a pytest test (bench_*.py is not collected).

Measured:
- one stream of SIZE MiB in 64 KiB DATA frames (what upstream peers send), then GOAWAY:
  time until the sink's byte count comes back, and routerd's CPU seconds per GiB;
- the same in 256 KiB frames (what our splice sends, jumpstarter/splice.py);
- STREAMS concurrent streams of SIZE/… MiB each, every stream on its own TLS
  connection at both ends (as many clients and exporters would be): aggregate
  throughput and routerd's CPU per GiB (all workers);
- small round trips (64-byte frame echoed back): p50/p99 latency.
With --workers N, routerd runs N worker processes sharing the port.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no fork-handler notices when we spawn far ends

import grpc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jumpstarter import routertoken  # noqa: E402
from jumpstarter.channels import message_limits  # noqa: E402
from jumpstarter.v1 import router_pb2, router_pb2_grpc  # noqa: E402

MiB = 1024 * 1024
CHUNK = 64 * 1024
OUR_CHUNK = 256 * 1024  # jumpstarter/splice.py CHUNK
DATA, GOAWAY = 0, 7
OPTIONS = message_limits()
SEPARATE = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # a channel of its own: its own connection
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- child processes: nothing we start outlives us -------------------------------------------

_children: list[subprocess.Popen[bytes]] = []
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    # No preexec_fn: running Python between fork and exec in a process with gRPC threads made the
    # far-end process fail now and then (a stream then waited for its peer forever); our own
    # children call _die_with_parent() themselves, routerd is stopped at exit.
    process = subprocess.Popen(argv, cwd=ROOT, **kw)
    _children.append(process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


atexit.register(lambda: [stop(p) for p in _children])
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda signum, _frame: sys.exit(128 + signum))


def peak_rss_mib(pid: int, reset: bool = True) -> float:
    """VmHWM of `pid` (MiB), then reset it to the current RSS (proc(5) clear_refs 5) when allowed."""
    with open(f"/proc/{pid}/status") as handle:
        hwm = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
    if reset:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    return hwm / 1024


def cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live children (routerd's workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
            if int(entry) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


# -- the far end: sink (count bytes, answer the count) or echo ---------------------------------


async def far_end(
    mode: str, read: Callable[[], Awaitable[Any]], write: Callable[[Any], Awaitable[None]]
) -> None:
    if mode == "echo":
        while (message := await read()) is not grpc.aio.EOF:
            if message.frame_type == GOAWAY:
                break
            await write(router_pb2.StreamResponse(payload=message.payload))
        return
    count = 0
    while (message := await read()) is not grpc.aio.EOF:
        if message.frame_type == GOAWAY:
            break
        count += len(message.payload)
    await write(router_pb2.StreamResponse(payload=str(count).encode()))
    await write(router_pb2.StreamResponse(frame_type=GOAWAY))


class DirectServer(router_pb2_grpc.RouterServiceServicer):
    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        mode = dict(context.invocation_metadata() or ()).get("mode", "sink")
        await far_end(str(mode), context.read, context.write)


async def serve_direct(path: str) -> None:
    server = grpc.aio.server(options=OPTIONS)
    router_pb2_grpc.add_RouterServiceServicer_to_server(DirectServer(), server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    print("ready", flush=True)
    await stopping.wait()
    await server.stop(None)


async def router_peers(endpoint: str, ca_path: str, mode: str) -> None:
    """Connect one far end per token read from stdin (JSON list) and serve them all."""
    tokens = json.loads(sys.stdin.readline())
    with open(ca_path, "rb") as handle:
        creds = grpc.ssl_channel_credentials(root_certificates=handle.read())
    channels = [grpc.aio.secure_channel(endpoint, creds, options=SEPARATE) for _ in tokens]
    try:

        async def one(token: str, channel: grpc.aio.Channel) -> None:
            call = router_pb2_grpc.RouterServiceStub(channel).Stream(
                metadata=[("authorization", f"Bearer {token}")]
            )

            async def write(message: Any) -> None:
                await call.write(
                    router_pb2.StreamRequest(payload=message.payload, frame_type=message.frame_type)
                )

            await far_end(mode, call.read, write)
            await call.done_writing()
            await call.code()

        print("ready", flush=True)
        await asyncio.gather(*(one(t, c) for t, c in zip(tokens, channels, strict=True)))
    finally:
        for channel in channels:
            await channel.close()


# -- the sender side (this process) -------------------------------------------------------------


class Target:
    """Where the sender's streams go: the direct unix socket, or routerd with a far-end process."""

    name = ""

    async def open(self, count: int, mode: str) -> list[Any]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class Direct(Target):
    name = "direct (unix socket)"

    def __init__(self, path: str) -> None:
        self.target = f"unix:{path}"
        self.channels: list[grpc.aio.Channel] = []

    async def open(self, count: int, mode: str) -> list[Any]:
        while len(self.channels) < count:
            self.channels.append(grpc.aio.insecure_channel(self.target, options=SEPARATE))
        return [
            router_pb2_grpc.RouterServiceStub(c).Stream(metadata=[("mode", mode)])
            for c in self.channels[:count]
        ]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class ThroughRouter(Target):
    name = "through routerd (TLS)"

    def __init__(self, port: int, ca_path: str, key: bytes) -> None:
        with open(ca_path, "rb") as handle:
            creds = grpc.ssl_channel_credentials(root_certificates=handle.read())
        self.endpoint = f"127.0.0.1:{port}"
        self.ca_path = ca_path
        self.key = key
        self.creds = creds
        self.channels: list[grpc.aio.Channel] = []
        self.peers: subprocess.Popen[bytes] | None = None

    async def open(self, count: int, mode: str) -> list[Any]:
        if self.peers is not None:
            await asyncio.to_thread(self.peers.wait)
        tokens = [routertoken.mint(self.key) for _ in range(count)]
        self.peers = spawn(
            [sys.executable, __file__, "--router-peers", self.endpoint, self.ca_path, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.peers.stdin is not None and self.peers.stdout is not None
        self.peers.stdin.write(json.dumps(tokens).encode() + b"\n")
        self.peers.stdin.close()
        if (await asyncio.to_thread(self.peers.stdout.readline)).strip() != b"ready":
            raise SystemExit("the far-end process failed to start")
        while len(self.channels) < count:
            self.channels.append(grpc.aio.secure_channel(self.endpoint, self.creds, options=SEPARATE))
        return [
            router_pb2_grpc.RouterServiceStub(c).Stream(metadata=[("authorization", f"Bearer {t}")])
            for t, c in zip(tokens, self.channels, strict=False)
        ]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        if self.peers is not None:
            await asyncio.to_thread(self.peers.wait)


async def send_and_count(call: Any, size: int, chunk: int = CHUNK) -> int:
    message = router_pb2.StreamRequest(payload=os.urandom(chunk))
    for _ in range(size // chunk):
        await call.write(message)
    await call.write(router_pb2.StreamRequest(frame_type=GOAWAY))
    await call.done_writing()
    reply = await call.read()
    counted = int(reply.payload)
    assert counted == size // chunk * chunk, (counted, size)
    while await call.read() is not grpc.aio.EOF:
        pass
    return counted


async def throughput(target: Target, streams: int, size_each: int, chunk: int = CHUNK) -> float:
    """MiB/s over all streams (wall clock from the first write to the last count)."""
    calls = await target.open(streams, "sink")
    started = time.perf_counter()
    counted = await asyncio.gather(*(send_and_count(c, size_each, chunk) for c in calls))
    elapsed = time.perf_counter() - started
    return sum(counted) / MiB / elapsed


async def round_trips(target: Target, count: int) -> list[float]:
    (call,) = await target.open(1, "echo")
    payload = router_pb2.StreamRequest(payload=b"x" * 64)
    for _ in range(50):  # warm-up, includes pairing
        await call.write(payload)
        await call.read()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call.write(payload)
        await call.read()
        samples.append(time.perf_counter() - started)
    await call.write(router_pb2.StreamRequest(frame_type=GOAWAY))
    await call.done_writing()
    await call.code()
    return samples


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


# -- main ---------------------------------------------------------------------------------------


def start_routerd(directory: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    config = os.path.join(directory, "routerd.yaml")
    with open(config, "w") as handle:
        json.dump(
            {
                "listen": "127.0.0.1:0",
                "tls": {"cert": "tls.crt", "key": "tls.key"},
                "router_key_file": "router.key",
                "metrics": None,
                "max_streams": 10000,
                "workers": workers,
            },
            handle,
        )
    log_path = os.path.join(directory, "routerd.log")
    with open(log_path, "wb") as log:
        process = spawn(
            [
                sys.executable,
                "-m",
                "routerd.main",
                "--config",
                config,
                "--create-key",
                "--log-format",
                "json",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(log_path) as handle:
            for line in handle:
                event = json.loads(line) if line.startswith("{") else {}
                if event.get("event") == "serving":
                    return process, int(event["port"])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    with open(log_path) as handle:
        raise SystemExit(f"routerd did not start:\n{handle.read()}")


async def bench(args: argparse.Namespace, directory: str) -> list[tuple[str, str, str, str]]:
    router, port = start_routerd(directory, args.workers)
    socket_path = os.path.join(directory, "direct.sock")
    server = spawn([sys.executable, __file__, "--serve-direct", socket_path], stdout=subprocess.PIPE)
    assert server.stdout is not None
    await asyncio.to_thread(server.stdout.readline)
    direct = Direct(socket_path)
    routed = ThroughRouter(
        port, os.path.join(directory, "tls.crt"), routertoken.load_key(os.path.join(directory, "router.key"))
    )
    rows = []
    size = args.size_mib * MiB
    d1 = await throughput(direct, 1, size)
    idle_rss = peak_rss_mib(router.pid)
    cpu0 = cpu_seconds(router.pid)
    r1 = await throughput(routed, 1, size)
    router_cpu = cpu_seconds(router.pid) - cpu0
    rss_single = peak_rss_mib(router.pid)
    gib = args.size_mib / 1024
    rows.append(
        (
            f"1 stream x {args.size_mib} MiB, 64 KiB frames",
            f"{d1:.0f} MiB/s",
            f"{r1:.0f} MiB/s",
            f"{r1 / d1:.2f}x (router CPU {router_cpu / gib:.2f} s/GiB)",
        )
    )
    d1b = await throughput(direct, 1, size, OUR_CHUNK)
    cpu0 = cpu_seconds(router.pid)
    r1b = await throughput(routed, 1, size, OUR_CHUNK)
    router_cpu = cpu_seconds(router.pid) - cpu0
    rows.append(
        (
            f"1 stream x {args.size_mib} MiB, 256 KiB frames",
            f"{d1b:.0f} MiB/s",
            f"{r1b:.0f} MiB/s",
            f"{r1b / d1b:.2f}x (router CPU {router_cpu / gib:.2f} s/GiB)",
        )
    )
    each = args.concurrent_mib * MiB
    dn = await throughput(direct, args.streams, each)
    cpu0 = cpu_seconds(router.pid)
    rn = await throughput(routed, args.streams, each)
    router_cpu = cpu_seconds(router.pid) - cpu0
    rss_many = peak_rss_mib(router.pid)
    rows.append(
        (
            f"{args.streams} streams x {each / MiB:g} MiB, aggregate, 64 KiB frames",
            f"{dn:.0f} MiB/s",
            f"{rn:.0f} MiB/s",
            f"{rn / dn:.2f}x (router CPU {router_cpu / (args.streams * each / MiB / 1024):.2f} s/GiB)",
        )
    )
    dl = await round_trips(direct, args.round_trips)
    rl = await round_trips(routed, args.round_trips)
    for p in (50, 99):
        dp, rp = percentile(dl, p) * 1e6, percentile(rl, p) * 1e6
        rows.append((f"64 B round trip p{p}", f"{dp:.0f} µs", f"{rp:.0f} µs", f"{rp - dp:+.0f} µs"))
    rows.append(
        (
            "round trip mean",
            f"{statistics.mean(dl) * 1e6:.0f} µs",
            f"{statistics.mean(rl) * 1e6:.0f} µs",
            f"{(statistics.mean(rl) - statistics.mean(dl)) * 1e6:+.0f} µs",
        )
    )
    rows.append(
        (
            "routerd peak RSS: idle / 1 stream / N streams",
            "",
            f"{idle_rss:.0f} / {rss_single:.0f} / {rss_many:.0f} MiB",
            "",
        )
    )
    await direct.close()
    await routed.close()
    stop(server)
    stop(router)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 MiB, 20 streams, 500 round trips")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--concurrent-mib", type=int, default=4, help="MiB per concurrent stream (default 4)")
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="routerd worker processes (default 1)")
    parser.add_argument("--serve-direct", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--router-peers", nargs=3, metavar=("ENDPOINT", "CA", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_direct or args.router_peers:
        _die_with_parent()
    if args.serve_direct:
        asyncio.run(serve_direct(args.serve_direct))
        return 0
    if args.router_peers:
        asyncio.run(router_peers(*args.router_peers))
        return 0
    if args.quick:
        args.size_mib, args.streams, args.concurrent_mib, args.round_trips = 32, 20, 1, 500
    directory = tempfile.mkdtemp(prefix="jsbr-", dir="/tmp")
    try:
        rows = asyncio.run(bench(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"\nrouterd benchmark ({os.cpu_count()} CPUs, grpcio {grpc.__version__}, routerd workers {args.workers})\n"
    )
    header = ("measure", "direct unix socket", "through routerd", "router / direct")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
