"""Prototype: routerd's splice on gRPC's synchronous server vs on grpc.aio vs routerd, same run.

    .venv/bin/python tests/bench/bench_router_sync.py [--size-mib 64] [--streams 100] [--rounds 3]

Three splice servers, each a separate process with TLS on loopback, measured in turn
with bench_router.py's measures (sender in this process, far ends in another):
- `routerd`: the real daemon (tokens, admission, metrics, logging);
- `bare aio`: a bare grpc.aio splice pairing on the authorization value, one copy task per
  direction (routerd's `_copy` without the bookkeeping);
- `bare aio-ro`: `bare aio` with routerd's server options (keepalive settings);
- `bare sync`: the same on grpc.server: each caller's handler thread yields the other
  caller's requests as its own responses (blocking reads, no event loop);
and `+latency`: the same with `("grpc.optimization_target", "latency")`.
Each round measures every server once, in an order rotated from round to round; medians over
rounds are printed.
Not a pytest test (bench_*.py is not collected).

Result (2 shared cores, load 2-4, `--size-mib 64 --streams 100 --rounds 6 --kinds aio aio-ro sync`):
the synchronous splice does not win. One stream it moves about what bare aio moves (0.43x vs
0.52x direct at 64 KiB frames, same CPU per GiB); 100 streams it is 0.26x vs 0.40x and costs
7.6 s/GiB vs 4.4 (200 threads contend for the GIL, and every frame crosses from gRPC's poller
thread to a handler thread and back); 64 B round trips are the same (+275 vs +307 us p50).
routerd stays on grpc.aio. routerd is within ~10-20 % of the bare aio splice (same CPU per GiB at
64 KiB frames); "grpc.optimization_target": "latency" and routerd's keepalive options change
nothing above noise. What is left of the gap to the goals is grpc.aio's own per-frame cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_router as br  # noqa: E402

from jumpstarter import routertoken  # noqa: E402
from jumpstarter.channels import server_options  # noqa: E402

SERVICE = "jumpstarter.v1.RouterService"
THREADS = 512  # two per spliced stream


def _token(context: Any) -> str:
    return str(dict(context.invocation_metadata() or ()).get("authorization", ""))


# -- bare sync splice -----------------------------------------------------------------------------


class SyncPair:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.eofs = 0
        self.done = threading.Event()

    def direction_done(self) -> None:
        with self.lock:
            self.eofs += 1
            if self.eofs == 2:
                self.done.set()


class SyncSplice:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: dict[str, SyncPair] = {}

    def stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        token = _token(context)
        with self.lock:
            pair = self.waiting.pop(token, None)
            if pair is None:
                pair = self.waiting[token] = SyncPair()
            pair.calls.append(requests)
            if len(pair.calls) == 2:
                pair.ready.set()
        context.send_initial_metadata(())
        pair.ready.wait()
        other = pair.calls[1] if pair.calls[0] is requests else pair.calls[0]
        try:
            yield from other  # the other caller's requests are our responses
        except grpc.RpcError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stream ended: the other peer went away")
        pair.direction_done()
        pair.done.wait()  # both half-closed: end both calls OK


def serve_sync(port_file: str, cert: str, key: str, latency: bool) -> None:
    splice = SyncSplice()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(splice.stream)}
    )
    extra = [("grpc.optimization_target", "latency")] if latency else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=THREADS), options=server_options(*extra))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", _credentials(cert, key))
    server.start()
    _announce(port_file, port)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    stopping.wait()
    server.stop(None)


# -- bare aio splice ------------------------------------------------------------------------------


class AioPairing:
    """Pair the two contexts, then each handler copies its caller's requests to the other."""

    def __init__(self) -> None:
        self.waiting: dict[str, tuple[grpc.aio.ServicerContext, asyncio.Future[Any]]] = {}

    async def stream(self, requests: object, context: grpc.aio.ServicerContext) -> None:
        token = _token(context)
        await context.send_initial_metadata(())
        entry = self.waiting.pop(token, None)
        if entry is None:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.waiting[token] = (context, done)
            other, both = await done
        else:
            other, done = entry
            both = [0, asyncio.Event()]
            done.set_result((context, both))
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                await other.write(message)
        except Exception:
            await other.abort(grpc.StatusCode.UNAVAILABLE, "stream ended: the other peer went away")
        both[0] += 1
        if both[0] == 2:
            both[1].set()
        await both[1].wait()


async def serve_aio(
    port_file: str, cert: str, key: str, latency: bool, routerd_options: bool = False
) -> None:
    splice = AioPairing()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(splice.stream)}
    )
    extra = [("grpc.optimization_target", "latency")] if latency else []
    if routerd_options:  # routerd's keepalive settings on top
        from routerd.service import SERVER_OPTIONS

        extra = [*SERVER_OPTIONS[len(server_options()) :], *extra]
    server = grpc.aio.server(options=server_options(*extra))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", _credentials(cert, key))
    await server.start()
    _announce(port_file, port)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await server.stop(None)


def _credentials(cert: str, key: str) -> grpc.ServerCredentials:
    with open(cert, "rb") as c, open(key, "rb") as k:
        return grpc.ssl_server_credentials([(k.read(), c.read())])


def _announce(port_file: str, port: int) -> None:
    with open(port_file + ".tmp", "w") as handle:
        handle.write(str(port))
    os.rename(port_file + ".tmp", port_file)


# -- the run --------------------------------------------------------------------------------------


def start_bare(directory: str, kind: str, latency: bool) -> tuple[subprocess.Popen[bytes], int]:
    port_file = os.path.join(directory, f"{kind}-{int(latency)}.port")
    argv = [sys.executable, __file__, "--serve", kind, port_file, "--latency" if latency else "--no-latency"]
    process = br.spawn(argv, stdin=subprocess.DEVNULL)
    deadline = br.time.monotonic() + 30
    while not os.path.exists(port_file):
        if process.poll() is not None or br.time.monotonic() > deadline:
            raise SystemExit(f"{kind} splice did not start")
        br.time.sleep(0.05)
    with open(port_file) as handle:
        return process, int(handle.read())


async def measure(target: br.Target, pid: int, args: argparse.Namespace) -> dict[str, float]:
    size = args.size_mib * br.MiB
    gib = args.size_mib / 1024
    out: dict[str, float] = {}
    for chunk, label in ((br.CHUNK, "64k"), (br.OUR_CHUNK, "256k")):
        cpu0 = br.cpu_seconds(pid)
        out[label] = await br.throughput(target, 1, size, chunk)
        out[label + " cpu"] = (br.cpu_seconds(pid) - cpu0) / gib
    each = args.concurrent_mib * br.MiB
    cpu0 = br.cpu_seconds(pid)
    out["many"] = await br.throughput(target, args.streams, each)
    out["many cpu"] = (br.cpu_seconds(pid) - cpu0) / (args.streams * each / br.MiB / 1024)
    samples = await br.round_trips(target, args.round_trips)
    out["p50"] = br.percentile(samples, 50) * 1e6
    out["p99"] = br.percentile(samples, 99) * 1e6
    return out


async def run(args: argparse.Namespace, directory: str) -> None:
    router, router_port = br.start_routerd(directory)
    cert = os.path.join(directory, "tls.crt")
    token_key = routertoken.load_key(os.path.join(directory, "router.key"))
    socket_path = os.path.join(directory, "direct.sock")
    direct_server = br.spawn(
        [sys.executable, br.__file__, "--serve-direct", socket_path], stdout=subprocess.PIPE
    )
    assert direct_server.stdout is not None
    await asyncio.to_thread(direct_server.stdout.readline)
    servers: dict[str, tuple[br.Target, int]] = {
        "direct": (br.Direct(socket_path), direct_server.pid),
        "routerd": (br.ThroughRouter(router_port, cert, token_key), router.pid),
    }
    for kind in args.kinds:
        for latency in (False, True) if args.latency else (False,):
            process, port = start_bare(directory, kind, latency)
            name = f"bare {kind}" + (" +latency" if latency else "")
            servers[name] = (br.ThroughRouter(port, cert, token_key), process.pid)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    names = list(servers)
    for round_ in range(args.rounds):
        shift = round_ % len(names)  # each server takes every place in the order: no order effect
        for name in names[shift:] + names[:shift]:
            target, pid = servers[name]
            results[name].append(await measure(target, pid, args))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    for target, _ in servers.values():
        await target.close()
    table(args, results)


def table(args: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    direct = results["direct"]
    print(
        f"\nsplice servers, medians of {args.rounds} rounds ({os.cpu_count()} CPUs, grpcio {grpc.__version__},"
        f" {args.size_mib} MiB single streams, {args.streams} x {args.concurrent_mib} MiB, {args.round_trips}"
        " round trips)\n"
    )
    print(
        "| server | 1 stream 64 KiB | 1 stream 256 KiB | CPU s/GiB 64k / 256k | "
        f"{args.streams} streams | CPU s/GiB | 64 B RTT p50 / p99 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in results:
        p50, p99 = med(name, "p50"), med(name, "p99")
        if direct is results[name]:
            cpu = ""
            rtt = f"{p50:.0f} / {p99:.0f} µs"
        else:
            cpu = f"{med(name, '64k cpu'):.2f} / {med(name, '256k cpu'):.2f}"
            rtt = f"+{p50 - med('direct', 'p50'):.0f} / +{p99 - med('direct', 'p99'):.0f} µs"
        ratio = [med(name, k) / med("direct", k) for k in ("64k", "256k", "many")]
        print(
            f"| {name} | {med(name, '64k'):.0f} MiB/s ({ratio[0]:.2f}x) | {med(name, '256k'):.0f} MiB/s"
            f" ({ratio[1]:.2f}x) | {cpu} | {med(name, 'many'):.0f} MiB/s ({ratio[2]:.2f}x) |"
            f" {'' if name == 'direct' else format(med(name, 'many cpu'), '.2f')} | {rtt} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--concurrent-mib", type=int, default=1)
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="*", default=["aio", "sync"])
    parser.add_argument(
        "--latency", action="store_true", help="also each bare splice with optimization_target"
    )
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--no-latency", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        br._die_with_parent()
        kind, port_file = args.serve
        directory = os.path.dirname(port_file)
        cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
        if kind == "sync":
            serve_sync(port_file, cert, key, args.latency)
        else:
            asyncio.run(serve_aio(port_file, cert, key, args.latency, kind == "aio-ro"))
        return 0
    directory = tempfile.mkdtemp(prefix="jsbrs-", dir="/tmp")
    try:
        asyncio.run(run(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
