"""The udev rules for an inventory: only devices a board's `match` can pick start jumpstarter-hotplug.

    jumpstarter lab render --output ... [--udev-rules /run/udev/rules.d/99-jumpstarter-boards.rules]

udev starts a program for every event its rules give a `RUN+=` to; at boot it
replays every device at once. So instead of one catch-all rule, each `match`
rule of the inventory becomes rule lines that fire only for the devices it can
match (the same properties, the same values); every other device starts
nothing. jumpstarter-hotplug still decides exactly (the lines may be broader,
never narrower). A plain `KEY` becomes `ENV{KEY}==` (what udev gives the
program is exactly those properties). An `@KEY` (the device or an ancestor)
becomes one line for the device itself and, for the USB identities below, one
with `ATTRS{}` (sysfs attributes, searched over the parents); udev has no way
to match another ancestor property, so such a key is left out of that line.
Matching lines mark the device `ENV{JUMPSTARTER_BOARD}=NAME`, which udev keeps
in its database: on `remove` the sysfs attributes are gone, the mark is not.

Values are allowlisted plain text, so no inventory value can be read by udev as
syntax (quotes, commas, `$`/`%` substitutions) or as a glob (`*?[]|`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess

from jumpstarter.config.inventory import Inventory
from jumpstarter.errors import ConfigError

DEFAULT_RULES = "/run/udev/rules.d/99-jumpstarter-boards.rules"
UDEV_CONTROL = "/run/udev/control"  # udevd's socket: it exists when udevd runs here
BOARD_ENV = "JUMPSTARTER_BOARD"
VALUE_RE = re.compile(r"^[A-Za-z0-9 _.:+@=#/-]{0,200}$")  # plain text: no udev syntax, no glob
ARG_RE = re.compile(r"^[A-Za-z0-9_.:+@=/-]{1,400}$")  # a word of the RUN+= command line
MAX_ANCESTOR_KEYS = 4  # 2**n lines per match rule; beyond, one broader line
# The ID_* that udev's usb_id builtin copies from these sysfs attributes of the USB device/interface.
ANCESTOR_ATTRS = {
    "ID_VENDOR_ID": "idVendor",
    "ID_MODEL_ID": "idProduct",
    "ID_SERIAL_SHORT": "serial",
    "ID_USB_INTERFACE_NUM": "bInterfaceNumber",
}
UDEV_TIMEOUT = 10.0

# Only these events and devices can be a board's (as before: no virtual devices, partitions or
# USB interfaces); everything else jumps to the end before any comparison with the inventory.
HEAD = """\
ACTION!="add|change|remove", GOTO="jumpstarter_boards_end"
SUBSYSTEM!="tty|block|usb", GOTO="jumpstarter_boards_end"
SUBSYSTEM=="usb", ENV{DEVTYPE}!="usb_device", GOTO="jumpstarter_boards_end"
SUBSYSTEM=="block", ENV{DEVTYPE}=="partition", GOTO="jumpstarter_boards_end"
DEVPATH=="/devices/virtual/*", GOTO="jumpstarter_boards_end"
# remove: the sysfs attributes are gone, the mark set on add is still in udev's database
ACTION=="remove", ENV{JUMPSTARTER_BOARD}=="?*", GOTO="jumpstarter_boards_run"
"""


def _value(value: str, where: str) -> str:
    if not VALUE_RE.match(value):
        bad = sorted({c for c in value if not VALUE_RE.match(c)})
        raise ConfigError(
            f"{where}: {value[:60]!r} cannot go into a udev rule ({'too long' if not bad else f'{bad!r}'}): "
            "values may use letters, digits, space and _ . : + @ = # / - (at most 200)"
        )
    return value


def _serial_glob(value: str) -> str:
    """usb_id turns blanks and characters it does not keep into `_`: any of them may be behind one."""
    return value.replace("_", "*")


def _terms(board: str, device: str, rules: dict[str, str]) -> list[list[str]]:
    """The match keys of each line for one `match` rule (their union covers every device it matches)."""
    where = f"board {board}: match.{device}"
    plain: list[str] = []
    ancestor: dict[str, str] = {}
    for key, raw in rules.items():
        value = _value(raw, f"{where}.{key}")
        if key.startswith("@"):
            ancestor[key[1:]] = value
        elif key == "SUBSYSTEM":
            plain.insert(0, f'SUBSYSTEM=="{value}"')
        else:
            plain.append(f'ENV{{{key}}}=="{value}"')
    if len(ancestor) > MAX_ANCESTOR_KEYS:
        return [plain]
    lines: list[list[str]] = []
    # Each subset of the @KEYs found only on an ancestor needs a line; udev compares all the
    # ATTRS{} of a line on one same parent, so a line gets at most one (the others are left out).
    for size in range(len(ancestor) + 1):
        for above in itertools.combinations(ancestor, size):
            terms = plain + [f'ENV{{{k}}}=="{v}"' for k, v in ancestor.items() if k not in above]
            mapped = [k for k in above if k in ANCESTOR_ATTRS]
            if mapped:
                key = mapped[0]
                value = _serial_glob(ancestor[key]) if key == "ID_SERIAL_SHORT" else ancestor[key]
                terms.append(f'ATTRS{{{ANCESTOR_ATTRS[key]}}}=="{value}"')
            if terms not in lines:
                lines.append(terms)
    return lines


def render_rules(inventory: Inventory, hotplug: list[str]) -> str:
    """The rules text; `hotplug` is the program and its arguments. ConfigError for unsafe values."""
    for arg in hotplug:
        if not ARG_RE.match(arg):
            raise ConfigError(
                f"{arg!r} cannot go into a udev RUN+= command: paths may use letters, digits and _ . : + @ = / -"
            )
    out = [
        f"# Generated by `jumpstarter lab render` from {_value(inventory.path, 'the inventory path')}.",
        "# Do not edit: change the inventory, then run `jumpstarter lab reload`.",
        HEAD.rstrip("\n"),
    ]
    for board, devices in inventory.matches.items():
        name = _value(board, f"board {board}")
        for device, rules in devices.items():
            out.append(f"# board {name}, match.{device}: {json.dumps(rules)}")  # JSON: one line, always
            for terms in _terms(board, device, rules):
                mark = f'ENV{{{BOARD_ENV}}}="{name}", GOTO="jumpstarter_boards_run"'
                out.append(", ".join([*terms, mark]) if terms else mark)
    out += [
        'GOTO="jumpstarter_boards_end"',
        'LABEL="jumpstarter_boards_run"',
        f'RUN+="{" ".join(hotplug)}"',
        'LABEL="jumpstarter_boards_end"',
        "",
    ]
    return "\n".join(out)


def hotplug_command(inventory: Inventory) -> list[str]:
    """What udev runs: jumpstarter-hotplug for this inventory (by its absolute path)."""
    from jumpstarter.lab.render import command

    return [*command("jumpstarter-hotplug", "jumpstarter.lab.hotplug"), "--inventory", os.path.abspath(inventory.path)]


def default_rules_path() -> str | None:
    """$JUMPSTARTER_UDEV_RULES, else the /run rules file when udevd runs here, else None (no udev)."""
    configured = os.environ.get("JUMPSTARTER_UDEV_RULES")
    if configured is not None:
        return configured or None
    return DEFAULT_RULES if os.path.exists(UDEV_CONTROL) else None


def apply_rules(path: str | None, text: str) -> str:
    """Write the rules atomically and have udevd re-read them when they changed; returns what happened."""
    from jumpstarter.lab.render import write_atomic

    if path is None:
        return "udev rules: udevd does not run here, none written (boards start at coldplug and reload)"
    if not write_atomic(path, text):
        return f"udev rules: {path} (unchanged)"
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return f"udev rules: {path} written; udevadm not found, so udevd was not told to reload"
    try:
        result = subprocess.run(
            [udevadm, "control", "--reload"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=UDEV_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"udev rules: {path} written; `udevadm control --reload` timed out (udevd reads them on restart)"
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"udev rules: {path} written; `udevadm control --reload` failed ({error}): udevd reads them when it starts"
    return f"udev rules: {path} written and reloaded"
