"""What serving our drivers on gRPC's synchronous thread-pool server would buy (issue 9's plan).

    .venv/bin/python tests/bench/bench_sync_session.py [ROUNDS]

The measurement prototype behind the move of exporterd to the thread-pool server (done: session/servicers.py);
kept to compare. It serves the benchmark config's `Session` on a
`grpc.server(ThreadPoolExecutor)` and answers `DriverCall` in the gRPC worker thread, either
handing each async driver method to the session's event loop (`sync-hop`, what a threaded
server costs with today's async drivers) or running it to completion in the worker thread
(`sync-direct`, what a synchronous driver method would cost). The prototype configures no
log output, so MockPower's `power on` line is dropped before structlog renders it; `sync-logged`
is `sync-direct` with exporterd's log output (daemon `configure`, JSON lines into a file): the
difference between the prototype and the built exporterd (issue 9). Next to them, in the same run:
exporterd as it is (now the thread-pool server itself) and upstream 0.9. Prints calls/s (median round) and server CPU
per call (median round) for sequential MockPower `on` calls from the wire-level client of
bench_exporter_vs_upstream.py.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path


def serve(config_path: str, sock: str, mode: str) -> None:
    import grpc

    from jumpstarter import values
    from jumpstarter.config.exporter import load_config
    from jumpstarter.driver.decorators import UNARY
    from jumpstarter.session.server import Session, fresh_uuid
    from jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

    if mode == "logged":  # what exporterd's configure_from does, its output into a file
        from jumpstarter.log import configure

        configure("INFO", json=True, stream=open(sock + ".log", "w"))  # noqa: SIM115
    config = load_config(config_path)
    session = Session(config.build(), labels=config.labels)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(session.start(), loop).result()

    class Servicer(jumpstarter_pb2_grpc.ExporterServiceServicer):
        def GetReport(self, request, context):  # type: ignore[no-untyped-def]
            return session.report()

        def DriverCall(self, request, context):  # type: ignore[no-untyped-def]
            session.check_ready()
            function, binder, is_async = session.method(request.uuid, request.method, UNARY)
            wire = request.args
            args = binder.bind([values.decode(a) for a in wire] if wire else [])
            if not is_async:
                result = function(*args)
            elif mode == "hop":
                result = asyncio.run_coroutine_threadsafe(function(*args), loop).result()
            else:  # a coroutine that never suspends, run here: what a synchronous method costs
                coroutine = function(*args)
                try:
                    coroutine.send(None)
                    raise RuntimeError(f"{request.method} suspended: not a synchronous method")
                except StopIteration as stop:
                    result = stop.value
            response = jumpstarter_pb2.DriverCallResponse(uuid=fresh_uuid())
            values.encode_into(response.result, result)
            return response

    server = grpc.server(
        futures.ThreadPoolExecutor(8), options=[("grpc.max_receive_message_length", 8 << 20)]
    )
    jumpstarter_pb2_grpc.add_ExporterServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port("unix:" + sock)
    server.start()
    server.wait_for_termination()


def main(rounds: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_exporter_vs_upstream as vs  # type: ignore[import-not-found]
    from bench_exporter import spawn, start_exporterd, stop, uuid_of  # type: ignore[import-not-found]

    work = tempfile.mkdtemp(prefix="jmp-sync-")
    config = os.path.join(work, "exporter.yaml")
    Path(config).write_text(vs.CONFIG.format(echo=1, sink=2))  # streams unused: ports never dialled
    targets = {}
    try:
        process, _, report = start_exporterd(
            config, os.path.join(work, "aio.sock"), os.path.join(work, "aio.log")
        )
        targets["exporterd"] = (process, os.path.join(work, "aio.sock"), uuid_of(report, "power"))
        for mode in ("hop", "direct", "logged"):
            sock = os.path.join(work, f"{mode}.sock")
            process = spawn([sys.executable, os.path.abspath(__file__), "--serve", config, sock, mode])
            targets[f"sync-{mode}"] = (process, sock, uuid_of(vs.wait_for_report(process, sock), "power"))
        sock = os.path.join(work, "upstream.sock")
        os.makedirs(os.path.join(work, "home"))
        process = spawn(
            [vs.upstream_python(), "-c", vs.UPSTREAM_SERVER, config, sock],
            cwd=work,
            env=vs.upstream_env(os.path.join(work, "home")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        targets["upstream 0.9"] = (process, sock, uuid_of(vs.wait_for_report(process, sock), "power"))
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        names = list(targets)
        for index in range(rounds):  # take turns, each going first in turn
            for name in names[index % len(names) :] + names[: index % len(names)]:
                process, sock, uuid = targets[name]
                results[name].append(asyncio.run(vs.unary(sock, uuid, 50, 500, process.pid)))
    finally:
        for process, *_ in targets.values():
            stop(process)
    upstream = statistics.median(r["calls_per_s"] for r in results["upstream 0.9"])
    print(f"load average {os.getloadavg()[0]:.2f}; {rounds} rounds of 500 sequential MockPower on calls")
    print()
    print("| server | calls/s | vs upstream | server CPU per call, µs |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        rate = statistics.median(r["calls_per_s"] for r in rows)
        cpu = statistics.median(r["server_us_per_call"] for r in rows)
        print(f"| {name} | {rate:,.0f} | {rate / upstream:.2f}× | {cpu:,.0f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(*sys.argv[2:5])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
