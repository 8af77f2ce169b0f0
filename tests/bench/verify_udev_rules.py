"""Check the rendered udev rules with the real udev: `udevadm test` on this machine's own devices.

    sudo .venv/bin/python tests/bench/verify_udev_rules.py

Needs root and udevadm (Debian: apt-get install udev); udevd need not run. Renders
the rules for an inventory naming two real devices here (the first non-virtual
tty by DEVNAME, the first non-virtual disk by ID_PATH), a decoy board and a
board matching on `@` USB keys (the ATTRS{} lines: udev must accept them), puts
them in /run/udev/rules.d under a name of their own, runs `udevadm test
--action=add|change` on every tty and block device, and prints which ones udev
would RUN jumpstarter-hotplug for. `udevadm test` runs no RUN program, but it
does what other rules do to /dev (permissions, symlinks) and writes udev's
database in /run/udev, as an `add` event would. The rules file is removed after.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jumpstarter.config.inventory import load_inventory  # noqa: E402
from jumpstarter.lab.udev_rules import render_rules  # noqa: E402

RULES = "/run/udev/rules.d/99-jumpstarter-verify.rules"
HOTPLUG = "/opt/jumpstarter-verify/bin/jumpstarter-hotplug"
RUN_LINE = re.compile(r"^run: '(.*)'$", re.M)


def properties(syspath: str) -> dict[str, str]:
    out = subprocess.run(["udevadm", "info", "-q", "property", syspath], capture_output=True, text=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def real(pattern: str) -> list[str]:
    return sorted(p for p in glob.glob(pattern) if "/virtual/" not in os.path.realpath(p))


def udev_test(action: str, syspath: str) -> tuple[list[str], dict[str, str], str]:
    result = subprocess.run(
        ["udevadm", "test", f"--action={action}", syspath], capture_output=True, text=True, timeout=60
    )
    text = result.stdout + result.stderr
    props = dict(line.split("=", 1) for line in result.stdout.splitlines() if re.match(r"^[A-Z_.]+=", line))
    return RUN_LINE.findall(text), props, text


def main() -> int:
    version = subprocess.run(["udevadm", "--version"], capture_output=True, text=True).stdout.strip()
    ttys, disks = real("/sys/class/tty/*"), real("/sys/class/block/*")
    disks = [d for d in disks if properties(d).get("DEVTYPE") == "disk"]
    if not ttys or not disks or not properties(disks[0]).get("ID_PATH"):
        print("no non-virtual tty and disk with ID_PATH here: nothing to verify against", file=sys.stderr)
        return 1
    tty, disk = properties(ttys[0]), properties(disks[0])
    inventory = f"""\
boards:
  - name: console
    match: {{serial: {{SUBSYSTEM: tty, DEVNAME: "{tty["DEVNAME"]}"}}}}
    export: {{power: {{type: power.mock}}}}
  - name: storage
    match: {{sd: {{SUBSYSTEM: block, ID_PATH: "{disk["ID_PATH"]}"}}}}
    export: {{power: {{type: power.mock}}}}
  - name: decoy
    match: {{serial: {{SUBSYSTEM: tty, DEVNAME: "/dev/ttyNOPE9"}}}}
    export: {{power: {{type: power.mock}}}}
  - name: usbquad
    match: {{serial: {{SUBSYSTEM: tty, "@ID_VENDOR_ID": "0403", "@ID_SERIAL_SHORT": "FT_4"}}}}
    export: {{power: {{type: power.mock}}}}
"""
    expected = {ttys[0]: "console", disks[0]: "storage"}
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "inventory.yaml")
        with open(path, "w") as handle:
            handle.write(inventory)
        text = render_rules(load_inventory(path), [HOTPLUG, "--inventory", path])
    os.makedirs(os.path.dirname(RULES), exist_ok=True)
    with open(RULES, "w") as handle:
        handle.write(text)
    failures = 0
    print(f"udevadm {version}; rules {RULES}:\n{text}")
    print("| device | action | udev RUN jumpstarter-hotplug | JUMPSTARTER_BOARD | expected |")
    print("|---|---|---|---|---|")
    try:
        for syspath in sorted(glob.glob("/sys/class/tty/*") + glob.glob("/sys/class/block/*")):
            for action in ("add", "change"):
                runs, props, log = udev_test(action, syspath)
                if RULES not in log:
                    print(f"udev did not read {RULES}:\n{log[-2000:]}", file=sys.stderr)
                    return 1
                ours = [r for r in runs if r.startswith(HOTPLUG)]
                want = expected.get(syspath)
                ok = bool(ours) == bool(want) and props.get("JUMPSTARTER_BOARD") == want
                failures += not ok
                if ours or want or action == "add":
                    board = props.get("JUMPSTARTER_BOARD", "-")
                    mark = "ok" if ok else "MISMATCH"
                    print(f"| {syspath} | {action} | {len(ours)} | {board} | {want or '-'} {mark} |")
        bad = [
            line for line in log.splitlines() if "99-jumpstarter-verify" in line and "invalid" in line.lower()
        ]
        if bad:
            print("udev complained about the rules:\n" + "\n".join(bad), file=sys.stderr)
            failures += 1
    finally:
        os.unlink(RULES)
    print(f"\n{'all as expected' if not failures else f'{failures} mismatches'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
