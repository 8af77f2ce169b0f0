"""Profile our exporterd (or upstream's exporter) under one of the vs-upstream workloads with py-spy.

    .venv/bin/pip install py-spy
    .venv/bin/python tests/bench/profile_exporter.py unary|echo|sink [--seconds 10] [--upstream]
        [--raw FILE] [--native]

Starts the server with bench_exporter_vs_upstream's config (MockPower, TcpNetwork to a local echo
and discard server), drives it with the same wire-level client for `--seconds`, and prints py-spy's
top functions by own time and by total time (`--raw FILE` keeps the collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench_exporter import spawn, start_exporterd, stop  # type: ignore[import-not-found]
from bench_exporter_vs_upstream import (  # type: ignore[import-not-found]
    CONFIG,
    TCP_SERVICES,
    UPSTREAM_SERVER,
    MiB,
    exporter_target,
    stream,
    unary,
    upstream_env,
    upstream_python,
    wait_for_report,
)


def top(raw: str, count: int = 25) -> str:
    """py-spy --format raw (collapsed stacks) -> the functions with the most own and total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(raw) as handle:
        for line in handle:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            weight = int(n)
            samples += weight
            frames = stack.split(";")
            own[frames[-1]] += weight
            for frame in set(frames):
                total[frame] += weight
    lines = [f"{samples} samples", "", "own %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(count)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in total.most_common(count)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", choices=["unary", "echo", "sink"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--upstream", action="store_true", help="profile upstream's exporter instead")
    parser.add_argument("--raw", help="keep py-spy's collapsed stacks here (flamegraph.pl input)")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if pyspy is None:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    workdir = tempfile.mkdtemp(prefix="jmp-prof-")
    services = spawn([sys.executable, "-c", TCP_SERVICES], stdout=subprocess.PIPE)
    assert services.stdout is not None
    echo_port, sink_port = services.stdout.readline().split()
    config = os.path.join(workdir, "exporter.yaml")
    with open(config, "w") as handle:
        handle.write(CONFIG.format(echo=int(echo_port), sink=int(sink_port)))
    sock = os.path.join(workdir, "server.sock")
    if args.upstream:
        with open(os.path.join(workdir, "server.log"), "wb") as log:
            process = spawn(
                [upstream_python(), "-c", UPSTREAM_SERVER, config, sock],
                cwd=workdir,
                env=upstream_env(workdir),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        target = exporter_target("upstream", process, sock, wait_for_report(process, sock))
    else:
        process, _, report = start_exporterd(config, sock, os.path.join(workdir, "server.log"))
        target = exporter_target("ours", process, sock, report)
    raw = args.raw or os.path.join(workdir, "profile.txt")
    try:
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(process.pid),
                "--format",
                "raw",
                "-o",
                raw,
                "--rate",
                "500",
                "--threads",
            ]
            + (["--native"] if args.native else []),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches

        async def drive() -> None:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                if args.workload == "unary":
                    await unary(sock, target["power"], 0, 500, process.pid)
                else:
                    await stream(
                        sock, target[args.workload], 32 * MiB, process.pid, echo=args.workload == "echo"
                    )

        asyncio.run(drive())
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(timeout=60)
    finally:
        stop(process)
        stop(services)
    print(top(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
