"""End-to-end remote benchmark: the same board operations locally and through controllerd + routerd.

    .venv/bin/python tests/bench/bench_remote.py [--mib 256] [--repeat 3] [--samples 300] [--json FILE]

One board, served by a real exporterd twice in one run: first on its unix socket alone (the
lab host), then registered with a real controllerd + routerd on loopback with TLS (a remote
client: lease, Dial, client tunnel -> routerd -> exporter). Its devices: a loop device (a
regular file when `losetup` is not allowed) as `storage.blockdev`, `power.mock`, and a pty
whose far end echoes every byte as `serial` (see bench_flash.py and bench_console.py).

Measured on both paths:
- `jumpstarter storage flash` of a MIB-MiB raw image (verified), median of REPEAT runs;
- `power.on()` round trip, p50/p99 over SAMPLES calls on one connection;
- console echo: one byte sent on the serial stream until it is read back, p50/p99;
- the first call: remote `jumpstarter shell -l board=bench -- jumpstarter power on` (lease ->
  Dial -> ready -> the call -> release) against local `jumpstarter --host SOCK power on`.
Also routerd's CPU seconds per GiB flashed. Prints a markdown table. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import yaml  # noqa: E402
from bench_console import echo_board, percentile  # noqa: E402
from bench_console import round_trips as console_round_trips  # noqa: E402
from bench_flash import loop_device  # noqa: E402
from storage_images import make_images  # noqa: E402

import jumpstarter  # noqa: E402
from jumpstarter.client.remote import ControllerClient  # noqa: E402
from jumpstarter.client.session import RemoteSession  # noqa: E402
from jumpstarter.config.client import load_client_config  # noqa: E402
from jumpstarter.demo.lab import socket_answers, wait_for  # noqa: E402
from tests.integration.central import Central, close_central, start_central, wait_until  # noqa: E402

MIB = 1024 * 1024
CLI = [sys.executable, "-m", "jumpstarter.cli.main"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def export(target: str, tty: str) -> dict[str, Any]:
    return {
        "storage": {"type": "storage.blockdev", "config": {"path": target}},
        "power": {"type": "power.mock"},
        "serial": {"type": "serial", "config": {"url": tty}},
    }


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    env["JUMPSTARTER_BOARDS_DIR"] = "/nonexistent"
    return {**env, **extra}


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:8])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def median_of(repeat: int, run: Callable[[], float]) -> float:
    run()  # warm-up: page cache, imports, the router's channel
    return statistics.median(run() for _ in range(repeat))


def power_round_trips(board: Any, samples: int) -> list[float]:
    """Milliseconds per `power.on()` call on one open connection."""
    for _ in range(20):
        board.power.on()
    results = []
    for _ in range(samples):
        started = time.perf_counter()
        board.power.on()
        results.append((time.perf_counter() - started) * 1000)
    return results


def measure(
    host: str, image: str, args: argparse.Namespace, env: dict[str, str], cpu: Callable[[], float] | None
) -> dict[str, Any]:
    """Flash, power and console figures through the exporter socket (or tunnel socket) `host`."""
    flash = [*CLI, "--host", host, "storage", "flash", "--no-progress", image]
    figures: dict[str, Any] = {}
    cpu0 = cpu() if cpu else 0.0
    figures["flash_s"] = median_of(args.repeat, lambda: timed(flash, env))
    if cpu:
        figures["router_cpu_s_per_gib"] = (cpu() - cpu0) / ((args.repeat + 1) * args.mib / 1024)
    with jumpstarter.connect(host) as board:
        figures["power_ms"] = power_round_trips(board, args.samples)
        figures["console_ms"] = console_round_trips(board, args.samples)
    return figures


def bench_local(folder: str, target: str, tty: str, image: str, args: argparse.Namespace) -> dict[str, Any]:
    config = os.path.join(folder, "local.yaml")
    document = {
        "apiVersion": "jumpstarter.dev/v1alpha1",
        "kind": "ExporterConfig",
        "metadata": {"namespace": "bench", "name": "local"},
        "export": export(target, tty),
    }
    with open(config, "w") as handle:
        yaml.safe_dump(document, handle)
    sock = os.path.join(folder, "local.sock")
    with open(os.path.join(folder, "local.log"), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporterd.main", "--config", config, "--socket", sock],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for(lambda: socket_answers(sock), 30, "exporterd", process)
        env = cli_env()
        figures = measure(sock, image, args, env, None)
        figures["first_call_s"] = median_of(
            args.repeat, lambda: timed([*CLI, "--host", sock, "power", "on"], env)
        )
        return figures
    finally:
        process.terminate()
        process.wait(timeout=30)


def bench_remote(target: str, tty: str, image: str, args: argparse.Namespace) -> dict[str, Any]:
    central: Central = start_central(prefix="jsbrm-", router_settings=args.router_settings)
    try:
        exporter = central.create("exporter", "bench", "remote", board="bench")
        client = central.create("client", "bench", "bencher")
        central.spawn_exporterd(
            "remote", exporter.config, export(target, tty), os.path.join(central.directory, "r.sock")
        )
        router = central.router
        assert router is not None
        controller = ControllerClient(load_client_config(client.config))
        try:

            def available() -> bool:
                return any(e.online and e.status == 2 for e in controller.list_exporters())

            wait_until(available, 30, "the exporter online and available", interval=0.1)
            with RemoteSession(controller, selector="board=bench", duration=3600) as session:
                figures = measure(session.path, image, args, cli_env(), lambda: cpu_seconds(router.pid))
            shell = [
                *CLI,
                "shell",
                "--client",
                client.config,
                "-l",
                "board=bench",
                "--",
                "jumpstarter",
                "power",
                "on",
            ]
            env = cli_env(JMP_CLIENT_CONFIG_HOME=os.path.join(central.directory, "config"))

            def first_call() -> float:
                elapsed = timed(shell, env)
                wait_until(available, 30, "the exporter free again", interval=0.05)  # the release settles
                return elapsed

            figures["first_call_s"] = median_of(args.repeat, first_call)
            return figures
        finally:
            controller.close()
    finally:
        close_central(central)


def table(local: dict[str, Any], remote: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, ...]]:
    mib = args.mib
    rows = [
        (
            f"`storage flash` {mib} MiB raw, verified (median of {args.repeat})",
            f"{local['flash_s']:.2f} s ({mib / local['flash_s']:.0f} MiB/s)",
            f"{remote['flash_s']:.2f} s ({mib / remote['flash_s']:.0f} MiB/s)",
            f"{local['flash_s'] / remote['flash_s']:.2f}x throughput; routerd CPU "
            f"{remote['router_cpu_s_per_gib']:.2f} s/GiB",
        )
    ]
    for key, name in (("power_ms", "`power.on()` round trip"), ("console_ms", "console echo, 1 byte")):
        for p in (50, 99):
            lv, rv = percentile(local[key], p), percentile(remote[key], p)
            rows.append((f"{name} p{p}", f"{lv:.2f} ms", f"{rv:.2f} ms", f"{rv - lv:+.2f} ms"))
    rows.append(
        (
            "first call: `shell -l … -- jumpstarter power on` vs `--host SOCK power on`",
            f"{local['first_call_s']:.2f} s",
            f"{remote['first_call_s']:.2f} s",
            f"{remote['first_call_s'] - local['first_call_s']:+.2f} s (lease, Dial, ready, release)",
        )
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300, help="power and console round trips per path")
    parser.add_argument("--workers", type=int, default=1, help="routerd workers (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    args.router_settings = {"workers": args.workers} if args.workers != 1 else {}
    folder = tempfile.mkdtemp(prefix="jsbrm-", dir="/tmp")
    device = None
    try:
        images = make_images(folder, args.mib)
        backing = os.path.join(folder, "target.img")
        with open(backing, "wb") as out:
            out.truncate((args.mib + 64) * MIB)
        device = loop_device(backing)
        target = device or backing
        with echo_board() as tty:
            local = bench_local(folder, target, tty, images["raw"], args)
            remote = bench_remote(target, tty, images["raw"], args)
    finally:
        if device:
            subprocess.run(["losetup", "--detach", device], check=False)
        shutil.rmtree(folder, ignore_errors=True)
    kind = "loop device" if device else "regular file"
    print(
        f"\nremote vs local, one run: {args.mib} MiB image to a {kind}; {args.samples} round trips; "
        f"routerd workers {args.workers}; {os.cpu_count()} CPUs\n"
    )
    header = (
        "operation",
        "local (exporter socket)",
        "remote (controllerd + routerd, TLS)",
        "remote vs local",
    )
    rows = table(local, remote, args)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
    if args.json:
        summary = {
            path: {
                k: (v if not isinstance(v, list) else {"p50": percentile(v, 50), "p99": percentile(v, 99)})
                for k, v in figures.items()
            }
            for path, figures in (("local", local), ("remote", remote))
        }
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
