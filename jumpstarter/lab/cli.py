"""`jumpstarter lab ...`: render, reload, status, check and suggest for this host's inventory.

Exit codes: 0 ok, 1 supervisord unreachable or refused, 2 inventory invalid.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from jumpstarter.errors import ConfigError
from jumpstarter.lab.hotplug import default_inventory
from jumpstarter.lab.supervisor import SupervisorError, default_url

DEFAULT_INCLUDE = "/run/jumpstarter/supervisor.d/boards.conf"


def default_include() -> str:
    return os.environ.get("JUMPSTARTER_SUPERVISOR_INCLUDE") or DEFAULT_INCLUDE


def add_lab_parser(subparsers: Any) -> None:
    """Add `lab` and its subcommands to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--inventory",
        metavar="FILE",
        default=default_inventory(),
        help="the lab inventory (default $JUMPSTARTER_INVENTORY or %(default)s)",
    )
    common.add_argument(
        "--supervisor",
        metavar="URL",
        default=default_url(),
        help="supervisord's XML-RPC URL (default $JUMPSTARTER_SUPERVISOR or %(default)s)",
    )
    udev = argparse.ArgumentParser(add_help=False)
    udev.add_argument(
        "--udev-rules",
        metavar="FILE",
        default=None,
        help="write the udev rules for the inventory's devices here (default $JUMPSTARTER_UDEV_RULES, "
        "else /run/udev/rules.d/99-jumpstarter-boards.rules when udevd runs here)",
    )
    lab = subparsers.add_parser(
        "lab",
        help="this lab host: the inventory's boards under supervisord",
        description="Manage this host's boards: render the supervisord include, apply inventory "
        "changes, list boards with their state, validate the inventory, suggest match rules.",
    )
    sub = lab.add_subparsers(title="lab commands", metavar="COMMAND")
    lab.set_defaults(func=lambda a: _usage(lab), needs_board=False)

    render = sub.add_parser(
        "render", parents=[common, udev], help="write the supervisord include for the inventory"
    )
    render.add_argument("--output", metavar="FILE", help="write here, atomically (default: stdout)")
    render.set_defaults(func=cmd_render, needs_board=False)
    reload = sub.add_parser(
        "reload",
        parents=[common, udev],
        help="validate, re-render and apply inventory changes (unchanged boards keep running)",
    )
    reload.add_argument(
        "--output",
        metavar="FILE",
        default=default_include(),
        help="the include supervisord reads (default $JUMPSTARTER_SUPERVISOR_INCLUDE or %(default)s)",
    )
    reload.set_defaults(func=cmd_reload, needs_board=False)
    status = sub.add_parser("status", parents=[common], help="each board: state, pid, socket, answers?")
    status.set_defaults(func=cmd_status, needs_board=False)
    check = sub.add_parser("check", parents=[common], help="validate the inventory")
    check.set_defaults(func=cmd_check, needs_board=False)
    suggest = sub.add_parser("suggest", help="print `match:` rules for the USB devices plugged in now")
    suggest.set_defaults(func=cmd_suggest, needs_board=False)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


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
    from jumpstarter.lab.supervisor import Supervisor
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
    from jumpstarter.lab.supervisor import Supervisor

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
    print(format_statuses(board_statuses(inventory, processes, default_lookup())))
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


def main(argv: list[str] | None = None) -> int:
    """`python -m jumpstarter.lab.cli lab ...`, the same as `jumpstarter lab ...`."""
    parser = argparse.ArgumentParser(prog="jumpstarter")
    add_lab_parser(parser.add_subparsers(title="commands", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
