"""Flash benchmark: `jumpstarter storage flash` of a 256 MiB image end to end, against `dd`.

    .venv/bin/python tests/bench/bench_flash.py [--mib 256] [--repeat 3] [--json FILE]

Writes the same image to the same disk both ways: `dd if=IMG of=TARGET bs=4M conv=fsync`,
and the CLI through a real exporterd (storage.blockdev) over its unix socket: raw and
zstd, with and without the read-back verification. The target is a loop device (a
real block device on this disk) when `losetup` works, a regular file otherwise.
Prints a markdown table: wall seconds (median), MB/s of image bytes, ratio to dd, and
exporterd's peak RSS (VmHWM). Not a pytest test (bench_*.py is not collected).
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from storage_images import make_images  # noqa: E402

MIB = 1024 * 1024
CLI = [sys.executable, "-m", "jumpstarter.cli.main"]
CONFIG = """\
apiVersion: jumpstarter.dev/v1alpha1
kind: ExporterConfig
metadata: {{namespace: bench, name: flash}}
export:
  storage:
    type: storage.blockdev
    config:
      path: {target}
"""


def loop_device(backing: str) -> str | None:
    done = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:6]} failed: {done.stderr[-2000:]}")
    return elapsed


def wait_for_socket(path: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("exporterd did not start")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="bench-flash-", dir="/tmp")
    device = None
    exporter = None
    try:
        images = make_images(folder, args.mib)
        backing = os.path.join(folder, "target.img")
        with open(backing, "wb") as out:
            out.truncate((args.mib + 64) * MIB)
        device = loop_device(backing)
        target = device or backing
        config = os.path.join(folder, "board.yaml")
        with open(config, "w") as out:
            out.write(CONFIG.format(target=target))
        socket = os.path.join(folder, "board.sock")
        with open(os.path.join(folder, "exporterd.log"), "wb") as log:
            exporter = subprocess.Popen(
                [sys.executable, "-m", "exporterd.main", "--config", config, "--socket", socket],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_socket(socket, exporter)
        env = {k: v for k, v in os.environ.items() if k != "JUMPSTARTER_HOST"}
        flash = [*CLI, "--host", socket, "storage", "flash", "--no-progress"]
        cases = {
            "dd bs=4M conv=fsync": [
                "dd",
                f"if={images['raw']}",
                f"of={target}",
                "bs=4M",
                "conv=fsync",
                "status=none",
            ],
            "flash raw, verified": [*flash, images["raw"]],
            "flash raw, --no-verify": [*flash, "--no-verify", images["raw"]],
            "flash zstd, verified": [*flash, images["zstd"]],
            "flash zstd, --no-verify": [*flash, "--no-verify", images["zstd"]],
        }
        results: dict[str, float] = {}
        for name, argv in cases.items():
            timed(argv, env)  # warm-up: page cache of the image, imports
            results[name] = statistics.median(timed(argv, env) for _ in range(args.repeat))
        peak = vm_hwm_mib(exporter.pid)
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(20)
        if device:
            subprocess.run(["losetup", "--detach", device], check=False)
        shutil.rmtree(folder, ignore_errors=True)

    size = args.mib * MIB
    base = results["dd bs=4M conv=fsync"]
    kind = "loop device" if device else "regular file"
    print(
        f"\n{args.mib} MiB image to a {kind} on the same disk; median of {args.repeat}; "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| case | seconds | MB/s (image) | throughput vs dd |")
    print("|---|---:|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {size / seconds / 1e6:,.0f} | {base / seconds:.2f} |")
    print(f"\nexporterd peak RSS (VmHWM) over all runs: {peak:.0f} MiB")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"mib": args.mib, "target": kind, "seconds": results, "peak_rss_mib": peak}, out, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
