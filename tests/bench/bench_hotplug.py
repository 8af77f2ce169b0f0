"""Lab host benchmark: udev event to a served socket, and exporterd memory with 20 boards.

    /work/venv/bin/python tests/bench/bench_hotplug.py [--boards 20]

Runs a real supervisord (LabSandbox) with N inventory boards, each with a serial
adapter (a pty) and a mock power switch. For each board one udev `add` event is
given to `jumpstarter-hotplug` as udev would; the time from the event (hotplug
process start) to the board's socket answering GetReport is measured, then the
resident memory of the N exporterds is read from /proc, then each board is
unplugged again (event to socket gone). Prints a markdown table; not pass/fail.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jumpstarter.demo.lab import socket_answers  # noqa: E402
from tests.harness.sandbox import LabSandbox, tty_event  # noqa: E402

MiB = 1024 * 1024


def inventory(boards: int) -> str:
    lines = ["boards:"]
    for i in range(boards):
        lines += [
            f"  - name: board-{i:02d}",
            "    match:",
            f'      serial: {{SUBSYSTEM: tty, ID_SERIAL_SHORT: "B{i:02d}"}}',
            "    export:",
            '      serial: {type: serial, config: {url: "${serial.devnode}"}}',
            "      power: {type: power.mock}",
        ]
    return "\n".join(lines) + "\n"


def poll(predicate, timeout: float = 20.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `predicate` holds (5 ms resolution)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("not within 20 s")
        time.sleep(0.005)
    return time.monotonic() - started


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes from /proc: PSS splits shared pages among the processes sharing them."""
    rss = pss = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms (p90 {sorted(values)[int(len(values) * 0.9) - 1] * 1000:.0f})"


def run(boards: int) -> None:
    names = [f"board-{i:02d}" for i in range(boards)]
    with LabSandbox() as lab:
        lab.write_inventory(inventory(boards))
        lab.start()
        ttys = [lab.tty() for _ in names]
        to_socket, hotplug_runs = [], []
        for i, name in enumerate(names):
            started = time.monotonic()
            result = lab.hotplug(tty_event("add", ttys[i], f"B{i:02d}"))
            hotplug_runs.append(time.monotonic() - started)
            assert result.returncode == 0, result.stderr
            poll(lambda name=name: socket_answers(lab.socket(name)))
            to_socket.append(time.monotonic() - started)
        pids = [lab.pid(name) for name in names]
        rss, pss = zip(*(memory(pid) for pid in pids), strict=True)
        to_gone = []
        for i, name in enumerate(names):
            started = time.monotonic()
            assert lab.hotplug(tty_event("remove", ttys[i], f"B{i:02d}")).returncode == 0
            poll(lambda name=name: not os.path.exists(lab.socket(name)))
            to_gone.append(time.monotonic() - started)

    print(
        f"\n## jumpstarter lab host: {boards} boards, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| udev add event -> socket answers GetReport (median of {boards}) | {median_ms(to_socket)} |")
    print(f"| jumpstarter-hotplug run time, add (median) | {median_ms(hotplug_runs)} |")
    print(f"| udev remove event -> socket gone (median of {boards}) | {median_ms(to_gone)} |")
    print(f"| exporterd RSS per board (median) | {statistics.median(rss) / MiB:.1f} MiB |")
    print(f"| exporterd RSS, {boards} boards (sum) | {sum(rss) / MiB:.0f} MiB |")
    print(
        f"| exporterd PSS per board (median; shared pages split) | {statistics.median(pss) / MiB:.1f} MiB |"
    )
    print(f"| exporterd PSS, {boards} boards (sum) | {sum(pss) / MiB:.0f} MiB |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=20)
    args = parser.parse_args()

    def interrupted(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through LabSandbox: supervisord and exporterds stop

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    run(args.boards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
