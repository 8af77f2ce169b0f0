"""Boot-time coldplug: how many hotplug processes udev starts for 52 devices, old rule vs rendered rules.

    .venv/bin/python tests/bench/bench_udev_coldplug.py [--workers 8] [--rounds 3]

At boot udev replays an `add` event for every device. This applies each rule set
to 52 synthetic devices (2 that inventory boards match, 50 unrelated: USB serial
adapters of other boards' makers, platform UARTs, SATA/NVMe/USB disks and their
partitions, USB hubs and keyboards, virtual ttys and loop devices) with
tests/udev_sim.py, then really spawns every RUN+= program that fires, with the
event's properties as its whole environment, `--workers` at a time as udevd's
workers do. The hotplug command is the same for both (this checkout's
jumpstarter-hotplug, this inventory, a supervisord that is not running, so a
matched board's start fails fast); only the rules differ. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jumpstarter.config.inventory import load_inventory  # noqa: E402
from jumpstarter.lab.udev_rules import hotplug_command, render_rules  # noqa: E402
from tests.udev_sim import SimDevice, Udev  # noqa: E402

OLD_PROGRAM = 'RUN+="/opt/jumpstarter/bin/jumpstarter-hotplug"'
INVENTORY = """\
socket_dir: {d}/boards
device_dir: {d}/devices
log_dir: {d}/log
boards:
  - name: rpi4-01
    match:
      serial: {{SUBSYSTEM: tty, ID_SERIAL_SHORT: "MATCH01"}}
    export: {{power: {{type: power.mock}}}}
  - name: imx8-02
    match:
      storage: {{SUBSYSTEM: block, "@ID_SERIAL_SHORT": "SDMUX02"}}
    export: {{power: {{type: power.mock}}}}
  - name: sim
    export: {{power: {{type: power.mock}}}}
"""


def usb_device(bus: int, port: int, vendor: str, product: str, serial: str) -> SimDevice:
    props = {"DEVPATH": f"/devices/pci0000:00/0000:00:14.0/usb{bus}/{bus}-{port}", "SUBSYSTEM": "usb"}
    props |= {"DEVTYPE": "usb_device", "ID_VENDOR_ID": vendor, "ID_MODEL_ID": product}
    props |= {"ID_SERIAL_SHORT": serial} if serial else {}
    return SimDevice(
        props, {"idVendor": vendor, "idProduct": product, **({"serial": serial} if serial else {})}
    )


def usb_tty(port: int, serial: str) -> SimDevice:
    usb = usb_device(1, port, "0403", "6001", serial)
    path = usb.properties["DEVPATH"]
    interface = SimDevice(
        {"DEVPATH": f"{path}/1-{port}:1.0", "SUBSYSTEM": "usb"}, {"bInterfaceNumber": "00"}, [usb]
    )
    props = {"DEVPATH": f"{path}/1-{port}:1.0/ttyUSB{port}/tty/ttyUSB{port}", "SUBSYSTEM": "tty"}
    props |= {
        "DEVNAME": f"/dev/ttyUSB{port}",
        "ID_BUS": "usb",
        "ID_VENDOR_ID": "0403",
        "ID_SERIAL_SHORT": serial,
    }
    return SimDevice(props, {}, [interface, usb])


def usb_disk(port: int, serial: str, name: str) -> SimDevice:
    usb = usb_device(2, port, "0bda", "0109", serial)
    path = f"{usb.properties['DEVPATH']}/2-{port}:1.0/host{port}/target{port}:0:0/{port}:0:0:0/block/{name}"
    props = {"DEVPATH": path, "SUBSYSTEM": "block", "DEVTYPE": "disk", "DEVNAME": f"/dev/{name}"}
    return SimDevice(props, {}, [usb])  # the disk itself has no ID_SERIAL_SHORT: found on the USB device


def plain(subsystem: str, devpath: str, devtype: str = "") -> SimDevice:
    props = {"DEVPATH": devpath, "SUBSYSTEM": subsystem, "DEVNAME": "/dev/" + devpath.rsplit("/", 1)[-1]}
    return SimDevice(props | ({"DEVTYPE": devtype} if devtype else {}))


def devices() -> tuple[list[SimDevice], list[SimDevice]]:
    """(the 2 devices boards match, the 50 unrelated ones)."""
    matching = [usb_tty(1, "MATCH01"), usb_disk(9, "SDMUX02", "sdz")]
    unrelated = [usb_tty(10 + i, f"OTHER{i:02d}") for i in range(8)]  # 8 other USB serial adapters
    unrelated += [plain("tty", f"/devices/platform/serial8250/tty/ttyS{i}") for i in range(6)]  # UARTs
    for i in range(4):  # 4 disks of the host (SATA, NVMe) and 8 partitions
        disk = f"/devices/pci0000:00/0000:00:17.0/ata{i}/host{i}/target{i}:0:0/{i}:0:0:0/block/sd{'abcd'[i]}"
        unrelated.append(plain("block", disk, "disk"))
        unrelated += [plain("block", f"{disk}/sd{'abcd'[i]}{p}", "partition") for p in (1, 2)]
    unrelated += [usb_disk(30 + i, f"STICK{i}", f"sd{'efgh'[i]}") for i in range(4)]  # 4 USB sticks
    unrelated += [
        usb_device(3, 1 + i, "1d6b" if i < 4 else "046d", "0002", "") for i in range(8)
    ]  # hubs, keyboards
    unrelated += [plain("tty", f"/devices/virtual/tty/tty{i}") for i in range(8)]  # virtual consoles
    unrelated += [plain("block", f"/devices/virtual/block/loop{i}", "disk") for i in range(4)]  # loop devices
    assert len(matching) == 2 and len(unrelated) == 50, len(unrelated)
    return matching, unrelated


def spawn(program: str, env: dict[str, str]) -> None:
    subprocess.run(shlex.split(program), env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


def replay(rules: str, all_devices: list[SimDevice], workers: int) -> tuple[int, int, float, float]:
    """(devices that fired, processes, wall seconds, children's CPU seconds) for one boot replay."""
    udev = Udev(rules)
    jobs = []
    for device in all_devices:
        result = udev.event("add", device)
        jobs += [(program, {**result.properties, "ACTION": "add"}) for program in result.run]
    fired = len({env["DEVPATH"] for _, env in jobs})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: spawn(*job), jobs))
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return fired, len(jobs), wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=8, help="events run at once (udevd: at least 8)")
    parser.add_argument("--rounds", type=int, default=3, help="replays per rule set; the median is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jsudev-") as directory:
        path = os.path.join(directory, "inventory.yaml")
        with open(path, "w") as handle:
            handle.write(INVENTORY.format(d=directory))
        inventory = load_inventory(path)
        program = hotplug_command(inventory, f"unix://{directory}/no-supervisord.sock")
        rendered = render_rules(inventory, program)
        with open(os.path.join(ROOT, "udev", "99-jumpstarter.rules")) as handle:
            shipped = handle.read()
        old = subprocess.run(
            ["git", "-C", ROOT, "show", "4ebb8c5:udev/99-jumpstarter.rules"], capture_output=True, text=True
        ).stdout
        assert OLD_PROGRAM in old, "the catch-all rule of main (4ebb8c5) is not available"
        old = old.replace(OLD_PROGRAM, f'RUN+="{" ".join(program)}"')
        matching, unrelated = devices()
        rows = []
        for name, rules in (
            ("old: catch-all rule", old),
            ("new: rendered from inventory", shipped + rendered),
        ):
            results = sorted(
                (replay(rules, matching + unrelated, args.workers) for _ in range(args.rounds)),
                key=lambda r: r[2],
            )
            rows.append((name, results[len(results) // 2]))
    print(
        f"52 devices (2 matched by the inventory, 50 unrelated), {args.workers} udev workers, "
        f"median of {args.rounds} replays, {os.cpu_count()} CPUs\n"
    )
    print(
        "| rules | devices that start hotplug | hotplug processes | wall time | CPU time of the processes |"
    )
    print("|---|---|---|---|---|")
    for name, (fired, processes, wall, cpu) in rows:
        print(f"| {name} | {fired} | {processes} | {wall:.2f} s | {cpu:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
