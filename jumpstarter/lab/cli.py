"""`jumpstarter lab ...`: render, reload, status, check and suggest for this host's inventory.

Exit codes: 0 ok, 1 supervisord unreachable or refused, 2 inventory invalid.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from jumpstarter.cli.builder import Command, add_commands, arg
from jumpstarter.cli.output import FORMATS, output_arg, print_data
from jumpstarter.errors import ConfigError

DEFAULT_INCLUDE = "/run/jumpstarter/supervisor.d/boards.conf"


def default_include() -> str:
    return os.environ.get("JUMPSTARTER_SUPERVISOR_INCLUDE") or DEFAULT_INCLUDE


def _default_inventory() -> str:
    from jumpstarter.lab.hotplug import default_inventory  # hotplug loads structlog: only when building

    return default_inventory()


def _default_supervisor() -> str:
    from jumpstarter.lab.supervisor import default_url

    return default_url()


def _refused(command: str, exc: ConfigError) -> int:
    print(f"jumpstarter lab {command}: {exc}", file=sys.stderr)
    return 2


def cmd_render(args: argparse.Namespace) -> int:
    from jumpstarter.config.inventory import load_inventory
    from jumpstarter.lab.account import lab_account, prepare_dirs
    from jumpstarter.lab.render import render, write_atomic
    from jumpstarter.lab.udev_rules import apply_rules, hotplug_command, render_rules

    try:
        inventory = load_inventory(args.inventory)
        account = lab_account(inventory)  # no user, no render: never a silent fallback to root
        # refused before anything is written
        rules = render_rules(inventory, hotplug_command(inventory, args.supervisor))
    except ConfigError as exc:
        return _refused("render", exc)
    text = render(inventory, args.supervisor)
    if not args.output:
        sys.stdout.write(text)
        return 0
    prepare_dirs(inventory, account)
    changed = write_atomic(args.output, text)
    print(apply_rules(_udev_rules(args), rules), file=sys.stderr)
    print(
        f"{args.output}: {len(inventory.boards)} boards{'' if changed else ' (unchanged)'}", file=sys.stderr
    )
    return 0


def _udev_rules(args: argparse.Namespace) -> str | None:
    from jumpstarter.lab.udev_rules import default_rules_path

    return args.udev_rules if args.udev_rules is not None else default_rules_path()


def cmd_reload(args: argparse.Namespace) -> int:
    from jumpstarter.config.inventory import load_inventory
    from jumpstarter.lab.account import lab_account, prepare_dirs
    from jumpstarter.lab.devices import default_lookup
    from jumpstarter.lab.reload import reload
    from jumpstarter.lab.supervisor import Supervisor, SupervisorError
    from jumpstarter.lab.udev_rules import hotplug_command, render_rules

    try:
        inventory = load_inventory(args.inventory)
        account = lab_account(inventory)
        render_rules(inventory, hotplug_command(inventory, args.supervisor))
    except ConfigError as exc:
        print(f"jumpstarter lab reload: {exc}", file=sys.stderr)
        print("inventory refused: nothing changed, the running boards keep running", file=sys.stderr)
        return 2
    prepare_dirs(inventory, account)
    try:
        with Supervisor(args.supervisor) as supervisor:
            result = reload(args.inventory, args.output, supervisor, default_lookup(), _udev_rules(args))
    except ConfigError as exc:  # the file changed between the two reads
        return _refused("reload", exc)
    except SupervisorError as exc:
        print(f"jumpstarter lab reload: {exc}", file=sys.stderr)
        return 1
    changes = result.changes
    print(result.udev, file=sys.stderr)
    for word, groups in (
        ("added", changes.added),
        ("changed", changes.changed),
        ("removed", changes.removed),
    ):
        for group in groups:
            print(f"{word:<8} {group}")
    for board, outcome in result.started.items():
        print(f"start    board-{board}: {outcome}")
    if not (changes.added or changes.changed or changes.removed):
        print("no changes")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from jumpstarter.config.inventory import load_inventory
    from jumpstarter.lab.devices import default_lookup
    from jumpstarter.lab.snapshot import STALE_AFTER, read_snapshot
    from jumpstarter.lab.status import board_statuses, format_statuses
    from jumpstarter.lab.supervisor import Supervisor, SupervisorError

    try:
        inventory = load_inventory(args.inventory)
    except ConfigError as exc:
        return _refused("status", exc)
    if _may_control(args.supervisor):
        try:
            with Supervisor(args.supervisor) as supervisor:
                processes = supervisor.processes()
        except SupervisorError as exc:
            print(f"jumpstarter lab status: {exc}", file=sys.stderr)
            return 1
    else:  # board users: the control socket is root's; read the snapshot supervisord keeps
        try:
            processes, age = read_snapshot(inventory.status_file)
        except ConfigError as exc:
            print(f"jumpstarter lab status: {exc}", file=sys.stderr)
            return 1
        print(f"(supervisord's states as of {age:.0f} s ago, from {inventory.status_file})", file=sys.stderr)
        if age > STALE_AFTER:
            print("warning: the snapshot is stale: is jumpstarter-lab running?", file=sys.stderr)
    statuses = board_statuses(inventory, processes, default_lookup())
    if not print_data([dataclasses.asdict(s) for s in statuses], args.output):
        print(format_statuses(statuses))
    return 0


def _may_control(url: str) -> bool:
    """Whether this user can reach supervisord's control socket (root and admins only)."""
    if not url.startswith("unix://"):
        return True
    path = url[len("unix://") :]
    return not os.path.exists(path) or os.access(path, os.R_OK | os.W_OK)


def cmd_check(args: argparse.Namespace) -> int:
    from jumpstarter.config.inventory import load_inventory

    try:
        inventory = load_inventory(args.inventory)
    except ConfigError as exc:
        return _refused("check", exc)
    hotplugged = [b.name for b in inventory.boards if inventory.matches.get(b.name)]
    print(
        f"{args.inventory}: ok, {len(inventory.boards)} boards "
        f"({len(hotplugged)} started by hotplug, {len(inventory.boards) - len(hotplugged)} always running)"
    )
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from jumpstarter.lab.devices import UdevLookup
    from jumpstarter.lab.suggest import format_suggestions, suggest

    try:
        lookup = UdevLookup()
    except Exception as exc:  # no pyudev / no sysfs here
        print(f"jumpstarter lab suggest: udev is not available here ({exc})", file=sys.stderr)
        return 1
    print(format_suggestions(suggest(lookup.present())))
    return 0


INVENTORY = arg(
    "--inventory",
    metavar="FILE",
    default_from=_default_inventory,
    help="the lab inventory (default $JUMPSTARTER_INVENTORY or %(default)s)",
)
UDEV_RULES = arg(
    "--udev-rules",
    metavar="FILE",
    default=None,
    help="write the udev rules for the inventory's devices here (default $JUMPSTARTER_UDEV_RULES, "
    "else /run/udev/rules.d/99-jumpstarter-boards.rules when udevd runs here)",
)
SUPERVISOR = arg(
    "--supervisor",
    metavar="URL",
    default_from=_default_supervisor,
    help="supervisord's XML-RPC URL (default $JUMPSTARTER_SUPERVISOR or %(default)s)",
)

LAB = Command(
    "lab",
    "this lab host: the inventory's boards under supervisord",
    description="Manage this host's boards: render the supervisord include, apply inventory "
    "changes, list boards with their state, validate the inventory, suggest match rules.",
    title="lab commands",
    commands=(
        Command(
            "render",
            "write the supervisord include for the inventory",
            cmd_render,
            args=(
                INVENTORY,
                SUPERVISOR,
                UDEV_RULES,
                arg("--output", metavar="FILE", help="write here, atomically (default: stdout)"),
            ),
        ),
        Command(
            "reload",
            "validate, re-render and apply inventory changes (unchanged boards keep running)",
            cmd_reload,
            args=(
                INVENTORY,
                SUPERVISOR,
                UDEV_RULES,
                arg(
                    "--output",
                    metavar="FILE",
                    default_from=default_include,
                    help="the include supervisord reads (default $JUMPSTARTER_SUPERVISOR_INCLUDE or %(default)s)",
                ),
            ),
        ),
        Command(
            "status",
            "each board: state, pid, socket, answers?",
            cmd_status,
            args=(INVENTORY, SUPERVISOR, output_arg(*FORMATS)),
        ),
        Command("check", "validate the inventory", cmd_check, args=(INVENTORY, SUPERVISOR)),
        Command("suggest", "print `match:` rules for the USB devices plugged in now", cmd_suggest),
    ),
)


def main(argv: list[str] | None = None) -> int:
    """`python -m jumpstarter.lab.cli lab ...`, the same as `jumpstarter lab ...`."""
    parser = argparse.ArgumentParser(prog="jumpstarter")
    add_commands(parser.add_subparsers(title="commands", metavar="COMMAND"), [LAB])
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
