"""QEMU test board: boot-to-prompt through the real driver and a real gRPC client (median of N boots).

    .venv/bin/python tests/bench/bench_qemu_boot.py [--boots 3] [--accel tcg]

Serves the `qemu` driver in-process (jumpstarter.driver.serve: the same session and gRPC path as
exporterd) with the test image of tests/images/build.py, then for each boot: `power.on()` returns
(QEMU started, paused until the serial driver holds its console, resumed), the init's `disk marker:`
line, the shell prompt. Prints a markdown table; not pass/fail.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jumpstarter.driver.serve import serve  # noqa: E402
from jumpstarter.drivers.qemu import Qemu  # noqa: E402
from tests.images.build import PROMPT, build, write_disk  # noqa: E402

APPEND = "console=tty0 console=ttyS0 quiet panic=-1"
STEPS = ("power.on() returned", "disk marker printed (first line: the kernel is quiet)", "shell prompt")


def boot_once(client) -> list[float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    client.power.on()  # returns once the console is held and the guest resumed
    marks = [time.monotonic() - started]
    with client.serial.console() as console:
        console.expect("disk marker: BENCH", timeout=300)
        marks.append(time.monotonic() - started)
        console.expect(PROMPT, timeout=300)
        marks.append(time.monotonic() - started)
    client.power.off()
    return marks


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    args = parser.parse_args()
    boot = build()
    with tempfile.TemporaryDirectory(prefix="jsqb-") as folder:
        write_disk(os.path.join(folder, "disk.img"), "BENCH")
        board = Qemu(
            kernel=os.path.join(boot, "vmlinuz"),
            initrd=os.path.join(boot, "initrd.gz"),
            append=APPEND,
            disk=os.path.join(folder, "disk.img"),
            accel=args.accel,
            shutdown_timeout=0,
            state_dir=os.path.join(folder, "state"),
        )
        with serve(board) as client:
            runs = [boot_once(client) for _ in range(args.boots)]
    with open(os.path.join(boot, "versions.txt")) as versions:
        packages = ", ".join(line.strip() for line in versions)
    print(
        f"## QEMU board boot ({platform.machine()}, {os.cpu_count()} cores, accel {args.accel}, {packages})\n"
    )
    print(f"| step (seconds after power.on()) | median of {args.boots} | min | max |")
    print("|---|---:|---:|---:|")
    for i, step in enumerate(STEPS):
        values = [run[i] for run in runs]
        print(f"| {step} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
