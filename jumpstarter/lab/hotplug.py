"""`jumpstarter-hotplug`: turn a udev event into "start board-NAME" / "stop board-NAME".

udev runs it (`RUN+=`) on add/change/remove of the devices the inventory's `match`
rules can pick (jumpstarter.lab.udev_rules renders those rules from the inventory),
with the event in its environment (ACTION, DEVNAME, DEVPATH, SUBSYSTEM, ID_*...):

    jumpstarter-hotplug [--inventory FILE] [--supervisor URL]
    jumpstarter-hotplug --coldplug          # once when supervisord starts: devices already present

A device matching a board's `match` rule is recorded in `device_dir/NAME.json`;
when all the board's devices are there (the others recorded earlier, or found
by pyudev) supervisord is asked to start `board-NAME`, without waiting. Removing
any of them stops the board. It returns well within a second: every supervisord
call has a short socket timeout and nothing waits for a process to start.

Exit status: always 0 (2 only for a bad command line). udev would log a failing
RUN program on every event of every device, and a missing supervisord early at
boot is normal (coldplug catches up), so problems are logged instead: JSON lines
on stderr and, when /dev/log exists, to syslog as `jumpstarter-hotplug`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from jumpstarter.config.inventory import Inventory
from jumpstarter.lab.devices import (
    Device,
    DeviceLookup,
    ListLookup,
    default_lookup,
    locked,
    read_devices,
    recorded_devices,
    write_devices,
)
from jumpstarter.lab.supervisor import Supervisor, program_name

DEFAULT_INVENTORY = "/etc/jumpstarter/inventory.yaml"
ADD_ACTIONS = ("add", "change")  # `change`: properties may have changed; starting twice is harmless
SUPERVISOR_TIMEOUT = 0.5

log = structlog.get_logger("hotplug")


def default_inventory() -> str:
    return os.environ.get("JUMPSTARTER_INVENTORY") or DEFAULT_INVENTORY


@dataclass
class Plan:
    """What an event (or coldplug) decided: boards to start and to stop, and why others wait."""

    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    waiting: dict[str, list[str]] = field(default_factory=dict)  # board -> devices still missing


def complete(
    inventory: Inventory, board: str, known: dict[str, Device], lookup: DeviceLookup
) -> tuple[dict[str, Device], list[str]]:
    """Fill in the board's devices not in `known` from the devices present now; returns (devices, missing)."""
    rules = inventory.matches[board]
    devices = dict(known)
    wanted = {name: r for name, r in rules.items() if name not in devices}
    if wanted:
        for device in lookup.present():
            for name, r in list(wanted.items()):
                if device.matches(r):
                    devices[name] = device
                    del wanted[name]
            if not wanted:
                break
    return devices, sorted(wanted)


def plan_event(action: str, device: Device, inventory: Inventory, lookup: DeviceLookup) -> Plan:
    """Match one event against the inventory and update the device records (caller holds the lock)."""
    plan = Plan()
    for board, rules in inventory.matches.items():
        hits = [name for name, r in rules.items() if device.matches(r)]
        if action in ADD_ACTIONS:
            if not hits:
                continue
            recorded = recorded_devices(inventory.device_dir, board, rules)
            devices, missing = complete(inventory, board, {**recorded, **dict.fromkeys(hits, device)}, lookup)
            write_devices(inventory.device_dir, board, devices)
            if missing:
                plan.waiting[board] = missing
            else:
                plan.start.append(board)
        elif action == "remove":
            # Ours when it is the device recorded for the board, or matches a device that has no record.
            recorded = read_devices(inventory.device_dir, board)  # unfiltered: its node may be gone already
            gone = [n for n, d in recorded.items() if d.is_same(device)]
            gone += [n for n in hits if n not in recorded]
            if not gone:
                continue
            write_devices(inventory.device_dir, board, {n: d for n, d in recorded.items() if n not in gone})
            plan.stop.append(board)
    return plan


def plan_coldplug(inventory: Inventory, lookup: DeviceLookup, boards: list[str] | None = None) -> Plan:
    """Every board with `match` (of `boards`, default all) whose devices are all present now is to start."""
    cached = ListLookup(list(lookup.present()))  # enumerate once for all boards
    plan = Plan()
    for board, rules in inventory.matches.items():
        if not rules or (boards is not None and board not in boards):
            continue
        recorded = recorded_devices(inventory.device_dir, board, rules)
        devices, missing = complete(inventory, board, recorded, cached)
        write_devices(inventory.device_dir, board, devices)
        if missing:
            plan.waiting[board] = missing
        else:
            plan.start.append(board)
    return plan


def carry_out(plan: Plan, supervisor: Supervisor) -> dict[str, str]:
    """Send the plan to supervisord; returns board -> outcome. Errors are logged, not raised."""
    from jumpstarter.lab.supervisor import SupervisorError

    outcomes: dict[str, str] = {}
    for board, missing in plan.waiting.items():
        log.info("waiting for devices", board=board, missing=missing)
    for verb, boards in (("stop", plan.stop), ("start", plan.start)):
        for board in boards:
            try:
                if verb == "start":
                    outcome = supervisor.start(program_name(board))
                else:
                    outcome = supervisor.stop(program_name(board))
            except SupervisorError as exc:
                outcome = f"failed: {exc}"
            outcomes[board] = outcome
            level = log.warning if outcome.startswith("failed") or outcome == "not loaded" else log.info
            hint = " (run `jumpstarter lab reload`)" if outcome == "not loaded" else ""
            level(f"{verb} board{hint}", board=board, outcome=outcome)
    return outcomes


def handle_event(
    env: Mapping[str, str], inventory: Inventory, supervisor: Supervisor, lookup: DeviceLookup
) -> dict[str, str]:
    action = env.get("ACTION", "")
    if action not in (*ADD_ACTIONS, "remove"):
        return {}
    device = Device.from_event(env, lookup)
    with locked(inventory.device_dir):
        plan = plan_event(action, device, inventory, lookup)
    if plan.start or plan.stop or plan.waiting:
        structlog.contextvars.bind_contextvars(action=action, devnode=device.devnode)
    return carry_out(plan, supervisor)


def coldplug(inventory: Inventory, supervisor: Supervisor, lookup: DeviceLookup) -> dict[str, str]:
    with locked(inventory.device_dir, timeout=5):
        plan = plan_coldplug(inventory, lookup)
    return carry_out(plan, supervisor)


def _configure_logging() -> None:
    import logging
    import logging.handlers

    from jumpstarter.log import configure

    configure("INFO", json=True, stream=sys.stderr)
    if os.path.exists("/dev/log"):
        root = logging.getLogger()
        ours = next(h for h in root.handlers if h.get_name() == "jumpstarter")
        try:
            syslog = logging.handlers.SysLogHandler("/dev/log", logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:
            return
        syslog.ident = "jumpstarter-hotplug: "
        syslog.setFormatter(ours.formatter)
        root.addHandler(syslog)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jumpstarter-hotplug",
        description="Start/stop inventory boards on udev events (run by udev, event in the environment).",
        epilog="Always exits 0: problems are logged to stderr and syslog, never reported to udev.",
    )
    parser.add_argument(
        "--inventory",
        metavar="FILE",
        default=default_inventory(),
        help="the lab inventory (default $JUMPSTARTER_INVENTORY or %(default)s)",
    )
    parser.add_argument(
        "--supervisor",
        metavar="URL",
        default=None,
        help="supervisord's XML-RPC URL (default $JUMPSTARTER_SUPERVISOR or "
        "unix:///run/jumpstarter/supervisor.sock)",
    )
    parser.add_argument(
        "--coldplug",
        action="store_true",
        help="instead of one event: start every board whose devices are present now",
    )
    args = parser.parse_args(argv)
    _configure_logging()
    started = time.monotonic()
    try:
        return _run(args)
    except Exception as exc:  # never fail udev's event: log it
        log.error("hotplug failed", error=f"{type(exc).__name__}: {exc}", inventory=args.inventory)
        return 0
    finally:
        elapsed = time.monotonic() - started
        if elapsed > 0.8:
            log.warning("hotplug was slow", seconds=round(elapsed, 3))


def _run(args: argparse.Namespace) -> int:
    from jumpstarter.config.inventory import load_inventory
    from jumpstarter.errors import ConfigError

    env = dict(os.environ)
    if not args.coldplug and env.get("ACTION") not in (*ADD_ACTIONS, "remove"):
        return 0
    try:
        inventory = load_inventory(args.inventory)
    except ConfigError as exc:
        log.error("inventory unusable; no board started or stopped", error=str(exc))
        return 0
    if not any(inventory.matches.values()):
        return 0
    with Supervisor(args.supervisor, timeout=SUPERVISOR_TIMEOUT) as supervisor:
        if args.coldplug:
            outcomes = coldplug(inventory, supervisor, default_lookup())
            log.info("coldplug done", boards=outcomes)
        else:
            handle_event(env, inventory, supervisor, default_lookup())
    return 0


if __name__ == "__main__":
    sys.exit(main())
