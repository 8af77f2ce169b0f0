"""`jumpstarter lab reload`: apply inventory changes without touching unchanged boards.

Validate first (a bad inventory changes nothing), write the include, then let
supervisord re-read it: added boards are added, removed ones stopped and
removed, changed ones (their inventory entry's digest differs) stopped,
removed and added again. Added and changed boards with `match` start at once
when their devices are present; every other board keeps running untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

from jumpstarter.config.inventory import load_inventory
from jumpstarter.lab.devices import DeviceLookup, locked, write_devices
from jumpstarter.lab.hotplug import carry_out, plan_coldplug
from jumpstarter.lab.render import render, write_atomic
from jumpstarter.lab.supervisor import PROGRAM_PREFIX, Changes, Supervisor
from jumpstarter.lab.udev_rules import apply_rules, hotplug_command, render_rules


@dataclass
class ReloadResult:
    changes: Changes
    started: dict[str, str]
    udev: str = ""  # what became of the udev rules (written, unchanged, no udev here)


def reload(
    inventory_path: str,
    output: str,
    supervisor: Supervisor,
    lookup: DeviceLookup,
    udev_rules: str | None = None,
) -> ReloadResult:
    """Raises ConfigError (nothing changed) for a bad inventory, SupervisorError when unreachable.

    `udev_rules`: where to write the inventory's udev rules (None: udev does not run here).
    """
    inventory = load_inventory(inventory_path)
    text = render(inventory, supervisor.url)
    rules = render_rules(inventory, hotplug_command(inventory, supervisor.url))
    supervisor.state()  # reachable, before anything is written
    write_atomic(output, text)
    changes = supervisor.apply_config()
    udev = apply_rules(udev_rules, rules)  # after: a board's hotplug finds its program loaded
    boards = [
        g[len(PROGRAM_PREFIX) :] for g in changes.added + changes.changed if g.startswith(PROGRAM_PREFIX)
    ]
    with locked(inventory.device_dir, timeout=5):
        for group in changes.removed:
            if group.startswith(PROGRAM_PREFIX):
                write_devices(inventory.device_dir, group[len(PROGRAM_PREFIX) :], {})
        plan = plan_coldplug(inventory, lookup, boards) if boards else None
    started = carry_out(plan, supervisor) if plan else {}
    return ReloadResult(changes, started, udev)
