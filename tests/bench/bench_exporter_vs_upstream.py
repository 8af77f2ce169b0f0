"""Our exporterd next to upstream Jumpstarter 0.9's exporter, same config, same wire-level client.

    .venv/bin/python tests/bench/bench_exporter_vs_upstream.py [--quick] [--repeat N] [--json FILE]
    (also: tests/bench/bench_exporter.py --upstream ...)

The client is shaped like upstream's: bare `grpc.aio` stubs, `DriverCall` requests built as
protobuf messages, byte streams as `RouterService.Stream` with protobuf `StreamRequest` frames
of 64 KiB, a `request` metadata entry, GOAWAY + half-close at the end. Both exporters serve
the same ExporterConfig (upstream class paths, which ours accepts): MockPower, and two
TcpNetwork drivers pointing at a local echo server and a local discard server (a separate
process, threads and plain sockets). A bare `grpc.aio` server (unary: returns its request;
stream: echoes / swallows frames) gives the ceiling of this machine; `--only bare-sync` adds the
same on grpc's synchronous thread-pool server (no event loop), the ceiling of a redesign that would
serve synchronous drivers on gRPC's worker threads.

Upstream runs from its own virtualenv (`.venv-upstream`, or $JUMPSTARTER_UPSTREAM_VENV;
`scripts/upstream-venv` makes it). Every figure is measured `--repeat` times, the servers
taking turns in short rounds (so that other load on the machine hits each alike); rates are the
median round, CPU per call / per MB the total over all rounds (server threads, user + system,
from /proc). The load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before grpc loads (see bench_exporter.FORK_SUPPORT_OFF): no fork handlers in this process.
FORK_SUPPORT_OFF = "GRPC_ENABLE_FORK_SUPPORT" not in os.environ
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from bench_exporter import (  # type: ignore[import-not-found]  # noqa: E402
    CHILD_ENV,
    CLK_TCK,
    cpu_ticks,
    spawn,
    start_exporterd,
    stop,
    uuid_of,
)

from jumpstarter.v1 import jumpstarter_pb2, router_pb2  # noqa: E402

if FORK_SUPPORT_OFF:
    CHILD_ENV.pop("GRPC_ENABLE_FORK_SUPPORT", None)  # the measured servers keep the caller's environment

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
FRAME = 64 * 1024
SERVICE = "/jumpstarter.v1.ExporterService/"
STREAM = "/jumpstarter.v1.RouterService/Stream"

CONFIG = """\
apiVersion: jumpstarter.dev/v1alpha1
kind: ExporterConfig
metadata:
  namespace: bench
  name: bench
endpoint: ""
token: ""
export:
  power:
    type: jumpstarter_driver_power.driver.MockPower
  echo:
    type: jumpstarter_driver_network.driver.TcpNetwork
    config:
      host: 127.0.0.1
      port: {echo}
  sink:
    type: jumpstarter_driver_network.driver.TcpNetwork
    config:
      host: 127.0.0.1
      port: {sink}
"""

# Runs with upstream's interpreter: serves the config on a unix socket, LEASE_READY as in `jmp shell`,
# logging as in `jmp run`.
UPSTREAM_SERVER = r"""
import asyncio, logging, sys
from pathlib import Path
from jumpstarter.common import ExporterStatus
from jumpstarter.config.exporter import ExporterConfigV1Alpha1, ExporterConfigV1Alpha1DriverInstance
from jumpstarter.exporter import Session

async def main(config_path, socket_path):
    logging.basicConfig(level=logging.INFO)  # what `jmp run` does: plain lines on stderr
    config = ExporterConfigV1Alpha1.load_path(Path(config_path))
    root = ExporterConfigV1Alpha1DriverInstance(
        type="jumpstarter_driver_composite.driver.Composite", description=config.description,
        children=config.export).instantiate()
    with Session(root_device=root) as session:
        async with session.serve_port_async("unix://" + socket_path):
            session.update_status(ExporterStatus.LEASE_READY)
            await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

# Local TCP services for the TcpNetwork drivers: echo and discard, one thread per connection.
TCP_SERVICES = r"""
import socket, sys, threading

def echo(conn):
    with conn:
        while data := conn.recv(262144):
            conn.sendall(data)

def discard(conn):
    with conn:
        while conn.recv(262144):
            pass

def serve(handler):
    listener = socket.create_server(("127.0.0.1", 0))
    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]

print(serve(echo), serve(discard), flush=True)
threading.Event().wait()  # until stopped (or our parent dies: PR_SET_PDEATHSIG)
"""

# The ceiling: a bare grpc.aio server; DriverCall answers an empty response, Stream echoes or swallows.
BARE_SERVER = r"""
import asyncio, sys, grpc
GOAWAY = b"\x10\x07"
async def call(request, context):
    return b""
async def stream(_requests, context):
    await context.send_initial_metadata(())
    sink = '"sink"' in dict(context.invocation_metadata()).get("request", "")
    while (frame := await context.read()) is not grpc.aio.EOF and frame != GOAWAY:
        if not sink:
            await context.write(frame)
    await context.write(GOAWAY)
async def main():
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20)])
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("jumpstarter.v1.ExporterService",
            {"DriverCall": grpc.unary_unary_rpc_method_handler(call)}),
        grpc.method_handlers_generic_handler("jumpstarter.v1.RouterService",
            {"Stream": grpc.stream_stream_rpc_method_handler(stream)}),
    ))
    server.add_insecure_port("unix:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""

# The synchronous ceiling: the same on grpc's thread-pool server (no event loop at all).
BARE_SYNC_SERVER = r"""
import sys, threading, grpc
from concurrent import futures
GOAWAY = b"\x10\x07"
def call(request, context):
    return b""
def stream(requests, context):
    context.send_initial_metadata(())
    sink = '"sink"' in dict(context.invocation_metadata()).get("request", "")
    for frame in requests:
        if frame == GOAWAY:
            break
        if not sink:
            yield frame
    yield GOAWAY
server = grpc.server(futures.ThreadPoolExecutor(8), options=[("grpc.max_receive_message_length", 8 << 20)])
server.add_generic_rpc_handlers((
    grpc.method_handlers_generic_handler("jumpstarter.v1.ExporterService",
        {"DriverCall": grpc.unary_unary_rpc_method_handler(call)}),
    grpc.method_handlers_generic_handler("jumpstarter.v1.RouterService",
        {"Stream": grpc.stream_stream_rpc_method_handler(stream)}),
))
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


def upstream_python() -> str:
    venv = Path(os.environ.get("JUMPSTARTER_UPSTREAM_VENV") or REPO / ".venv-upstream")
    python = venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise SystemExit(f"no upstream venv at {venv}: run scripts/upstream-venv {venv}")
    return str(python)


def upstream_env(home: str) -> dict[str, str]:
    """Upstream must never import our package: no PYTHONPATH, no virtualenv variables."""
    env = {
        k: v
        for k, v in CHILD_ENV.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JMP_", "JUMPSTARTER_"))
    }
    env["HOME"] = home
    return env


def wait_for_report(process: subprocess.Popen[bytes], socket: str, timeout: float = 60) -> Any:
    from bench_exporter import raw_report  # type: ignore[import-not-found]

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{socket} did not answer within {timeout:g} s")
        if os.path.exists(socket):
            try:
                return raw_report(socket)
            except grpc.RpcError:
                pass
        time.sleep(0.01)


def wait_for_socket(process: subprocess.Popen[bytes], socket: str, timeout: float = 30) -> None:
    import socket as socketlib

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server on {socket} did not start")
        probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        try:
            probe.connect(socket)
            return
        except OSError:
            time.sleep(0.01)
        finally:
            probe.close()


# -- the wire-level client ------------------------------------------------------------------


async def unary(socket: str, power: str, warmup: int, count: int, pid: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        call = channel.unary_unary(
            SERVICE + "DriverCall",
            request_serializer=jumpstarter_pb2.DriverCallRequest.SerializeToString,
            response_deserializer=jumpstarter_pb2.DriverCallResponse.FromString,
        )
        for _ in range(warmup):
            await call(jumpstarter_pb2.DriverCallRequest(uuid=power, method="on", args=[]))
        cpu0 = cpu_ticks(pid)
        t0 = time.perf_counter()
        for _ in range(count):
            await call(jumpstarter_pb2.DriverCallRequest(uuid=power, method="on", args=[]))
        wall = time.perf_counter() - t0
        cpu = (cpu_ticks(pid) - cpu0) / CLK_TCK
    return {"calls_per_s": count / wall, "server_us_per_call": cpu / count * 1e6, "cpu_s": cpu, "work": count}


async def stream(socket: str, uuid: str, total: int, pid: int, echo: bool) -> dict[str, float]:
    """Send `total` bytes in 64 KiB frames; for echo, read them all back; for a sink, wait for the end."""
    request = json.dumps({"kind": "driver", "uuid": uuid, "method": "connect"})
    payload = os.urandom(FRAME)
    count = total // FRAME
    async with grpc.aio.insecure_channel(
        f"unix:{socket}", options=[("grpc.max_receive_message_length", 8 << 20)]
    ) as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=router_pb2.StreamRequest.SerializeToString,
            response_deserializer=router_pb2.StreamResponse.FromString,
        )(metadata=(("request", request),))
        await call.initial_metadata()

        async def writer() -> None:
            for _ in range(count):
                await call.write(router_pb2.StreamRequest(payload=payload))
            await call.write(router_pb2.StreamRequest(frame_type=router_pb2.FRAME_TYPE_GOAWAY))
            await call.done_writing()

        cpu0 = cpu_ticks(pid)
        t0 = time.perf_counter()
        sending = asyncio.ensure_future(writer())
        received = 0
        while True:
            frame = await call.read()
            if frame is grpc.aio.EOF or frame.frame_type == router_pb2.FRAME_TYPE_GOAWAY:
                break
            received += len(frame.payload)
        await sending
        wall = time.perf_counter() - t0
        cpu = (cpu_ticks(pid) - cpu0) / CLK_TCK
        call.cancel()
    expected = count * FRAME if echo else 0
    if received != expected:
        raise AssertionError(f"stream: received {received} bytes, expected {expected}")
    mb = count * FRAME / 1e6
    return {
        "mb_per_s": mb / wall,
        "server_cpu_pct": 100 * cpu / wall,
        "server_us_per_mb": cpu / mb * 1e6,
        "cpu_s": cpu,
        "work": mb,
    }


# -- the run --------------------------------------------------------------------------------


def measure(target: dict[str, Any], calls: int, total: int) -> dict[str, dict[str, float]]:
    pid = target["pid"]

    async def run() -> dict[str, dict[str, float]]:
        out = {"unary": await unary(target["socket"], target["power"], calls // 10, calls, pid)}
        print(
            f"  {target['name']}: unary {out['unary']['calls_per_s']:,.0f}/s",
            end="",
            file=sys.stderr,
            flush=True,
        )
        out["echo"] = await stream(target["socket"], target["echo"], total, pid, echo=True)
        print(f", echo {out['echo']['mb_per_s']:,.0f} MB/s", end="", file=sys.stderr, flush=True)
        out["sink"] = await stream(target["socket"], target["sink"], total, pid, echo=False)
        print(f", one-way {out['sink']['mb_per_s']:,.0f} MB/s", file=sys.stderr, flush=True)
        return out

    return asyncio.run(run())


def median(runs: list[dict[str, dict[str, float]]], test: str, key: str) -> float:
    """Rates: the median over rounds. CPU per unit: total CPU over total work (ticks are 10 ms coarse)."""
    if key.startswith("server_us_per_"):
        return sum(r[test]["cpu_s"] for r in runs) / sum(r[test]["work"] for r in runs) * 1e6
    return statistics.median(r[test][key] for r in runs)


def exporter_target(name: str, process: subprocess.Popen[bytes], sock: str, report: Any) -> dict[str, Any]:
    """A measured exporter: its process, socket and the uuids of its power, echo and sink drivers."""
    return {
        "name": name,
        "process": process,
        "pid": process.pid,
        "socket": sock,
        **{n: uuid_of(report, n) for n in ("power", "echo", "sink")},
    }


def start_before(ref: str, workdir: str, config: str) -> dict[str, Any]:
    """Our exporterd as of `ref` (its packages exported from git, first on PYTHONPATH), same venv."""
    tree = os.path.join(workdir, "before")
    os.makedirs(tree)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "jumpstarter", "exporterd"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    sock = os.path.join(workdir, "before.sock")
    env = {**CHILD_ENV, "PYTHONPATH": tree}
    with open(os.path.join(workdir, "before.log"), "wb") as log:
        process = spawn(
            [sys.executable, "-m", "exporterd.main", "--config", config, "--socket", sock],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return exporter_target("before", process, sock, wait_for_report(process, sock))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--mib", type=int, default=32, help="MiB per stream and round (default 32)")
    parser.add_argument("--calls", type=int, default=500, help="sequential calls per round (default 500)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=15,
        help="rounds, the servers taking turns in each (default 15): short rounds, many turns",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every round's figures as JSON")
    parser.add_argument(
        "--only",
        choices=["before", "ours", "upstream", "bare", "bare-sync"],
        action="append",
        help="measure only these servers (repeatable)",
    )
    parser.add_argument(
        "--before",
        metavar="GITREF",
        help="also measure our exporterd as of GITREF (column 'before'), in the same run",
    )
    args = parser.parse_args(argv)
    calls, total = (300, 16 * MiB) if args.quick else (args.calls, args.mib * MiB)
    load_start = os.getloadavg()
    workdir = tempfile.mkdtemp(prefix="jmp-vs-up-")
    services = spawn([sys.executable, "-c", TCP_SERVICES], stdout=subprocess.PIPE)
    assert services.stdout is not None
    echo_port, sink_port = services.stdout.readline().split()
    config = os.path.join(workdir, "exporter.yaml")
    Path(config).write_text(CONFIG.format(echo=int(echo_port), sink=int(sink_port)))
    wanted = args.only or (["before"] if args.before else []) + ["ours", "upstream", "bare"]
    targets: dict[str, dict[str, Any]] = {}
    try:
        if "before" in wanted:
            targets["before"] = start_before(args.before, workdir, config)
        if "ours" in wanted:
            sock = os.path.join(workdir, "ours.sock")
            process, _, report = start_exporterd(config, sock, os.path.join(workdir, "ours.log"))
            targets["ours"] = exporter_target("ours", process, sock, report)
        if "upstream" in wanted:
            sock = os.path.join(workdir, "upstream.sock")
            os.makedirs(os.path.join(workdir, "home"), exist_ok=True)
            with open(os.path.join(workdir, "upstream.log"), "wb") as log:
                process = spawn(
                    [upstream_python(), "-c", UPSTREAM_SERVER, config, sock],
                    cwd=workdir,
                    env=upstream_env(os.path.join(workdir, "home")),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            targets["upstream"] = exporter_target("upstream", process, sock, wait_for_report(process, sock))
        if "bare" in wanted:
            sock = os.path.join(workdir, "bare.sock")
            process = spawn([sys.executable, "-c", BARE_SERVER, sock])
            wait_for_socket(process, sock)
            targets["bare"] = {
                "name": "bare",
                "process": process,
                "pid": process.pid,
                "socket": sock,
                "power": "none",
                "echo": "echo",
                "sink": "sink",
            }
        if "bare-sync" in wanted:
            sock = os.path.join(workdir, "bare-sync.sock")
            process = spawn([sys.executable, "-c", BARE_SYNC_SERVER, sock])
            wait_for_socket(process, sock)
            targets["bare-sync"] = {
                "name": "bare-sync",
                "process": process,
                "pid": process.pid,
                "socket": sock,
                "power": "none",
                "echo": "echo",
                "sink": "sink",
            }
        rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in targets}
        order = list(targets)
        for index in range(args.repeat):
            # the servers take turns (same noise for each), each going first in turn
            for name in order[index % len(order) :] + order[: index % len(order)]:
                rounds[name].append(measure(targets[name], calls, total))
    finally:
        for target in targets.values():
            stop(target["process"])
        stop(services)
    load_end = os.getloadavg()

    print(
        f"## exporterd vs upstream 0.9 ({args.repeat} rounds of {calls:,} sequential calls and "
        f"{total // MiB} MiB per stream in 64 KiB frames; rates: median round; CPU: total / total work)"
    )
    print()
    command = " ".join(
        ["python", os.path.relpath(__file__, REPO), *(argv if argv is not None else sys.argv[1:])]
    )
    print(f"- command: `{command}`")
    print(f"- load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; nproc {os.cpu_count()}")
    if args.before:
        print(f"- before: our exporterd as of {args.before}")
    print()
    names = [
        n for n in ("upstream", "before", "ours", "bare", "bare-sync") if n in targets
    ]  # the reading order
    ratios = [r for r in ("upstream", "before") if "ours" in names and r in names]
    print("| metric | " + " | ".join(names) + " |" + "".join(f" ours / {r} |" for r in ratios))
    print("|---|" + "---:|" * (len(names) + len(ratios)))
    rows = [
        ("unary DriverCall (MockPower on), sequential, calls/s", "unary", "calls_per_s", "{:,.0f}"),
        ("server CPU per unary call, µs", "unary", "server_us_per_call", "{:,.0f}"),
        ("echo through TcpNetwork to a local echo server, MB/s", "echo", "mb_per_s", "{:,.0f}"),
        ("  server CPU per MB echoed, µs", "echo", "server_us_per_mb", "{:,.0f}"),
        ("one-way through TcpNetwork into a local sink, MB/s", "sink", "mb_per_s", "{:,.0f}"),
        ("  server CPU per MB one-way, µs", "sink", "server_us_per_mb", "{:,.0f}"),
    ]
    for label, test, key, fmt in rows:
        cells = [fmt.format(median(rounds[n], test, key)) for n in names]
        ours = median(rounds["ours"], test, key) if ratios else 0.0
        extra = "".join(f" {ours / median(rounds[r], test, key):.2f}× |" for r in ratios)
        print(f"| {label} | " + " | ".join(cells) + " |" + extra)
    print()
    for r in ratios:  # the same round's figures side by side: load drifting between rounds cancels out
        rate = statistics.median(
            o["unary"]["calls_per_s"] / t["unary"]["calls_per_s"]
            for o, t in zip(rounds["ours"], rounds[r], strict=True)
        )
        cpu = statistics.median(
            o["unary"]["server_us_per_call"] / t["unary"]["server_us_per_call"]
            for o, t in zip(rounds["ours"], rounds[r], strict=True)
        )
        print(
            f"- unary, ours / {r} round by round (median of per-round ratios): {rate:.2f}× calls/s, {cpu:.2f}× CPU/call"
        )
    print()
    print(
        "spread (min–max over rounds): "
        + "; ".join(
            f"{n} unary {min(r['unary']['calls_per_s'] for r in rounds[n]):,.0f}–"
            f"{max(r['unary']['calls_per_s'] for r in rounds[n]):,.0f}/s, echo "
            f"{min(r['echo']['mb_per_s'] for r in rounds[n]):,.0f}–{max(r['echo']['mb_per_s'] for r in rounds[n]):,.0f}"
            f", sink {min(r['sink']['mb_per_s'] for r in rounds[n]):,.0f}–{max(r['sink']['mb_per_s'] for r in rounds[n]):,.0f} MB/s"
            for n in names
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"load": [load_start, load_end], "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
