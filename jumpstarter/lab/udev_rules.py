"""The udev rules for an inventory: only devices a board's `match` can pick start jumpstarter-hotplug.

    jumpstarter lab render --output ... [--udev-rules /run/udev/rules.d/99-jumpstarter-boards.rules]

udev starts a program for every event its rules give a `RUN+=` to; at boot it
replays every device at once. So instead of one catch-all rule, each `match`
rule of the inventory becomes rule lines that fire only for the devices it can
match (the same properties, the same values); every other device starts
nothing. jumpstarter-hotplug still decides exactly (the lines may be broader,
never narrower). A plain `KEY` becomes `ENV{KEY}==` (what udev gives the
program is exactly those properties). An `@KEY` (the device or an ancestor)
is looked for on the device itself (`ENV{}`) and, for the USB identities below,
on its parents (`ATTRS{}`, their sysfs attributes); udev has no way to match any
other property of an ancestor, so such a key is left out (a broader line).
Matching lines mark the device `ENV{JUMPSTARTER_BOARD}=NAME`, which udev keeps
in its database: on `remove` the sysfs attributes are gone, the mark is not.

Values are allowlisted plain text, so no inventory value can be read by udev as
syntax (quotes, commas, `$`/`%` substitutions) or as a glob (`*?[]|`).
"""

from __future__ import annotations

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
# The ID_* that udev's usb_id builtin copies from these sysfs attributes of the USB device/interface,
# so that `@KEY` finds them on a parent.
ANCESTOR_ATTRS = {
    "ID_SERIAL_SHORT": "serial",
    "ID_MODEL_ID": "idProduct",
    "ID_VENDOR_ID": "idVendor",
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


def _lines(board: str, device: str, rules: dict[str, str], number: int) -> list[str]:
    """The rule lines for one `match` rule: they fire for every device it matches."""
    where = f"board {board}: match.{device}"
    terms: list[str] = []
    flags: list[str] = []
    for key, raw in rules.items():
        value = _value(raw, f"{where}.{key}")
        if key == "SUBSYSTEM":
            terms.insert(0, f'SUBSYSTEM=="{value}"')
            continue
        if not key.startswith("@"):
            terms.append(f'ENV{{{key}}}=="{value}"')
            continue
        name = key[1:]
        if name not in ANCESTOR_ATTRS:
            continue  # udev cannot see an ancestor's properties: left out, the line is broader
        # The device itself or a parent: a flag (`.`: never stored nor exported) set by either line,
        # since udev compares all the ATTRS{} of one line on one same parent.
        flag = f"ENV{{.jumpstarter_{number}_{name}}}"
        attr = _serial_glob(value) if name == "ID_SERIAL_SHORT" else value
        flags += [
            f'ENV{{{name}}}=="{value}", {flag}="1"',
            f'ATTRS{{{ANCESTOR_ATTRS[name]}}}=="{attr}", {flag}="1"',
        ]
        terms.append(f'{flag}=="1"')
    mark = f'ENV{{{BOARD_ENV}}}="{board}", GOTO="jumpstarter_boards_run"'
    return [*flags, ", ".join([*terms, mark])]


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
    number = 0
    for board, devices in inventory.matches.items():
        _value(board, f"board {board}")
        for device, rules in devices.items():
            out.append(f"# board {board}, match.{device}: {json.dumps(rules)}")  # JSON: one line, always
            out += _lines(board, device, rules, number)
            number += 1
    out += [
        'GOTO="jumpstarter_boards_end"',
        'LABEL="jumpstarter_boards_run"',
        f'RUN+="{" ".join(hotplug)}"',
        'LABEL="jumpstarter_boards_end"',
        "",
    ]
    return "\n".join(out)


def hotplug_command(inventory: Inventory, supervisor_url: str) -> list[str]:
    """What udev runs: jumpstarter-hotplug for this inventory (by its absolute path) and supervisord."""
    from jumpstarter.lab.render import command

    if "@" in supervisor_url:  # the rules file is world-readable: never a password in it
        raise ConfigError(
            f"a supervisord URL with credentials cannot go into the udev rules: {supervisor_url!r}"
        )
    program = command("jumpstarter-hotplug", "jumpstarter.lab.hotplug")
    return [*program, "--inventory", os.path.abspath(inventory.path), "--supervisor", supervisor_url]


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
        return (
            f"udev rules: {path} written; `udevadm control --reload` timed out (udevd reads them on restart)"
        )
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"udev rules: {path} written; `udevadm control --reload` failed ({error}): udevd reads them when it starts"
    return f"udev rules: {path} written and reloaded"
