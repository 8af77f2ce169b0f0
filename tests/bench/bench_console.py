"""Serial console round-trip latency: a byte the client types comes back from the board.

    .venv/bin/python tests/bench/bench_console.py [--samples N] [--json FILE]

The board is a pty whose other end echoes every byte at once (a thread in this process, like
a board's tty echo); a real exporterd serves the pty as its `serial` driver. The client sends
one byte on the console stream (`board.serial.open()`) and waits until it is read back:
1. local: straight to exporterd's unix socket;
2. remote: leased through a real controllerd + routerd on loopback with TLS (the stream goes
   client -> routerd -> exporterd and back).
Prints a markdown table (p50/p99/max in milliseconds). Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jumpstarter  # noqa: E402
from jumpstarter.demo.lab import socket_answers, wait_for  # noqa: E402
from tests.integration.central import close_central, start_central  # noqa: E402

WARMUP = 20
PROBE = b"x"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


@contextmanager
def echo_board() -> Iterator[str]:
    """A pty whose far end echoes every byte (the board); yields the path exporterd opens."""
    controller, board_side = os.openpty()
    tty.setraw(board_side)
    tty.setraw(controller)
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            try:
                data = os.read(controller, 4096)
            except OSError:  # exporterd closed its end for a moment: keep the pty
                time.sleep(0.01)
                continue
            os.write(controller, data)

    threading.Thread(target=echo, daemon=True, name="board-echo").start()
    try:
        yield os.ttyname(board_side)
    finally:
        stop.set()
        os.close(board_side)  # the echo thread's read fails from now on; it is a daemon


def round_trips(board: Any, samples: int) -> list[float]:
    """Milliseconds from sending one byte on the console until it is read back."""
    results = []
    with board.serial.open() as stream:
        for index in range(WARMUP + samples):
            start = time.perf_counter()
            stream.send(PROBE)
            got = b""
            while PROBE not in got:
                got += stream.receive()
            if index >= WARMUP:
                results.append((time.perf_counter() - start) * 1000)
    return results


def serial_export(tty_path: str) -> dict[str, Any]:
    return {"serial": {"type": "serial", "config": {"url": tty_path}}}


def bench_local(tty_path: str, directory: str, samples: int) -> list[float]:
    import subprocess

    import yaml

    config = os.path.join(directory, "local.yaml")
    document = {
        "apiVersion": "jumpstarter.dev/v1alpha1",
        "kind": "ExporterConfig",
        "metadata": {"namespace": "bench", "name": "local"},
        "export": serial_export(tty_path),
    }
    with open(config, "w") as handle:
        yaml.safe_dump(document, handle)
    sock = os.path.join(directory, "local.sock")
    with open(os.path.join(directory, "local.log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporterd.main", "--config", config, "--socket", sock],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: socket_answers(sock), 30, "exporterd", process)
        with jumpstarter.connect(sock) as board:
            return round_trips(board, samples)
    finally:
        process.terminate()
        process.wait(timeout=30)


def bench_remote(tty_path: str, samples: int) -> list[float]:
    central = start_central(prefix="jsbc-")
    try:
        exporter = central.create("exporter", "bench", "console", board="console")
        client = central.create("client", "bench", "bencher")
        socket_path = os.path.join(central.directory, "console.sock")
        central.spawn_exporterd("console", exporter.config, serial_export(tty_path), socket_path)
        with jumpstarter.lease(selector="board=console", duration="10m", client=client.config) as board:
            return round_trips(board, samples)
    finally:
        close_central(central)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=500, help="round trips per path (default 500)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="jsbc-", dir="/tmp") as directory, echo_board() as tty_path:
        rows["local socket (client -> exporterd -> pty echo)"] = bench_local(
            tty_path, directory, args.samples
        )
        rows["controllerd + routerd (TLS, loopback)"] = bench_remote(tty_path, args.samples)
    print(
        f"\nconsole round trip, 1 byte, {args.samples} samples each ({platform.node()}, {os.cpu_count()} CPUs)\n"
    )
    print("| path | p50 ms | p99 ms | max ms | mean ms |")
    print("|---|---:|---:|---:|---:|")
    figures = {}
    for name, values in rows.items():
        figures[name] = {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values),
            "mean": statistics.fmean(values),
        }
        f = figures[name]
        print(f"| {name} | {f['p50']:.2f} | {f['p99']:.2f} | {f['max']:.2f} | {f['mean']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
