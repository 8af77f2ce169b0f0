"""`jumpstarter`: drive a board from the shell.

    jumpstarter power on                 # this host's only board
    jumpstarter --board rpi4 serial console
    jumpstarter --config board.yaml describe
    jumpstarter run -- pytest tests/

Exit codes: 0 ok, 1 driver or connection error, 2 usage or config error;
`run`/`shell -- CMD` exit with CMD's own code.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from typing import Any

from jumpstarter.cli.target import TargetChoice

REMOTE = ("login", "config", "get", "lease")
BUILTINS = ("describe", "shell", "run", "port-forward", "boards", "demo", "version", "admin", "lab", *REMOTE)
NO_TARGET = frozenset({"boards", "demo", "version", "admin", "lab", *REMOTE})
SOURCES = {1: "driver", 2: "beforeLease", 3: "afterLease", 4: "exporter"}
EPILOG = """\
target (first match wins): --host, --board, --config, --env, --detect, $JUMPSTARTER_HOST,
or the only board of this host (sockets in $JUMPSTARTER_BOARDS_DIR, default /run/jumpstarter/boards).
Run `jumpstarter` with no arguments to list this host's boards and detected USB hardware.
remote boards: `jumpstarter login --token TOKEN`, then `jumpstarter shell -l board=rpi4 [-- CMD]`.
exit codes: 0 ok, 1 driver or connection error, 2 usage or config error; run/shell exit with CMD's code."""


def global_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jumpstarter",
        description="Drive lab boards: power, serial console, storage, network, commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    target = parser.add_argument_group("target")
    target.add_argument("--host", metavar="PATH", help="exporter socket path (or $JUMPSTARTER_HOST)")
    target.add_argument("--board", metavar="NAME", help="a board of this host")
    target.add_argument("--config", metavar="FILE", help="serve an exporter config in-process")
    target.add_argument("--env", metavar="FILE.py", help="serve an environment Python file (defines `board`)")
    target.add_argument("--detect", action="store_true", help="serve the USB serial adapters plugged in now")
    parser.add_argument("--logs", action="store_true", help="show the exporter's log records on stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=_version())
    return parser


def _version() -> str:
    from jumpstarter import __version__

    return f"jumpstarter {__version__}"


def _choice(ns: argparse.Namespace) -> TargetChoice:
    return TargetChoice(host=ns.host, board=ns.board, config=ns.config, env=ns.env, detect=ns.detect)


def add_static_commands(sub: Any) -> None:
    """The commands that work without a board."""
    from jumpstarter.cli import commands

    boards = sub.add_parser("boards", help="list this host's boards and detected USB hardware")
    boards.set_defaults(func=lambda a: commands.list_boards(), needs_board=False)
    demo = sub.add_parser(
        "demo",
        help="run the demo lab: a fake board with a serial console and a power switch",
        description="Start an exporterd serving a simulated board (a process on a pseudo-terminal, "
        "switched by a local HTTP power switch), then power it on, read its boot banner, power it off.",
    )
    demo.add_argument("--keep", action="store_true", help="keep the demo lab running and open a shell in it")
    demo.set_defaults(func=lambda a: _demo(a), needs_board=False)
    from jumpstarter.cli.admin import add_admin_parser

    add_admin_parser(sub)
    from jumpstarter.cli.remote import add_remote_parsers

    add_remote_parsers(sub)
    from jumpstarter.lab.cli import add_lab_parser

    add_lab_parser(sub)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda a: print(_version()), needs_board=False)


def _demo(args: argparse.Namespace) -> int:
    from jumpstarter.demo.walk import run_demo

    return run_demo(keep=args.keep)


def add_board_commands(sub: Any, root: Any, socket: str) -> None:
    from jumpstarter.cli import commands
    from jumpstarter.client.drivers.composite import add_children_cli

    describe = sub.add_parser("describe", help="show the board's drivers, labels and methods")
    describe.set_defaults(func=lambda a: commands.describe(root, socket))
    for name, helptext in (
        ("shell", "open a shell (or run CMD) with JUMPSTARTER_HOST set to this board"),
        ("run", "run CMD with JUMPSTARTER_HOST set; exit with its code"),
    ):
        cmd = sub.add_parser(name, help=helptext, description=helptext)
        cmd.add_argument(
            "cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments"
        )
        cmd.set_defaults(
            func=lambda a, name=name: commands.subshell(socket, a.cmd, interactive=name == "shell")
        )
    forward = sub.add_parser("port-forward", help="forward a local TCP port to a network driver")
    forward.add_argument("driver", metavar="NAME", help="network driver path, e.g. ssh or dut.ssh")
    from jumpstarter.client.drivers.network import add_forward_arguments

    add_forward_arguments(forward)
    forward.set_defaults(func=lambda a: commands.port_forward(root, a))
    add_children_cli(root, sub, reserved=frozenset(BUILTINS))


def full_parser(root: Any, socket: str, remote_shell: bool = False) -> argparse.ArgumentParser:
    parser = global_parser(add_help=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_static_commands(sub)
    if root is not None:
        add_board_commands(sub, root, socket)
    elif remote_shell:
        from jumpstarter.cli.remote import add_remote_shell_parsers

        add_remote_shell_parsers(sub)
    return parser


def run(argv: list[str]) -> int:
    pre = global_parser(add_help=False)
    pre.add_argument("command", nargs="?")
    pre.add_argument("rest", nargs=argparse.REMAINDER)
    ns, _ = pre.parse_known_args(argv)
    wants_help = "-h" in argv or "--help" in argv
    choice = _choice(ns)

    if ns.command in NO_TARGET or (ns.command is None and not choice.given and not wants_help):
        if ns.command is None:
            from jumpstarter.cli.commands import list_boards

            return list_boards()
        args = full_parser(None, "").parse_args(argv)
        return _dispatch(args)
    if ns.command in ("shell", "run") and not choice.given:
        from jumpstarter.cli.remote import wants_remote

        if wants_remote(ns.rest):  # `shell -l SELECTOR`: a leased board, through the controller
            return _dispatch(full_parser(None, "", remote_shell=True).parse_args(argv))

    from jumpstarter.cli.target import open_target
    from jumpstarter.errors import JumpstarterError

    try:
        with open_target(choice) as socket:
            from jumpstarter.client.connection import Connection
            from jumpstarter.client.tree import build_tree

            connection = Connection(socket)
            follower: threading.Thread | None = None
            try:
                root = build_tree(connection.report(), connection)
                parser = full_parser(root, socket)
                args = parser.parse_args(argv)
                if getattr(args, "func", None) is None:
                    parser.print_help(sys.stderr)
                    return 2
                if args.logs:
                    follower = _follow_logs(connection)
                return _dispatch(args)
            finally:
                connection.close()  # ends the log stream too
                if follower is not None:  # no thread may touch gRPC while the interpreter shuts down
                    follower.join(timeout=5)
    except JumpstarterError as exc:
        if wants_help:  # still show what works without a board
            full_parser(None, "").print_help()
            print(f"\n(no board commands: {exc})")
            return 0
        raise


def _dispatch(args: argparse.Namespace) -> int:
    func: Callable[[argparse.Namespace], Any] = args.func
    result = func(args)
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


def _follow_logs(connection: Any) -> threading.Thread:
    def follow() -> None:
        try:
            for record in connection.logs():
                fields = " ".join(f"{k}={v}" for k, v in sorted(record.structured_fields.items()))
                source = SOURCES.get(record.source, "exporter")
                sys.stderr.write(f"[{source}] {record.severity:<7} {record.message} {fields}".rstrip() + "\n")
                sys.stderr.flush()
        except Exception:
            pass

    thread = threading.Thread(target=follow, daemon=True, name="logs")
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from jumpstarter.errors import ConfigError, JumpstarterError

    try:
        return run(argv)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        if debug:
            raise
        print(f"jumpstarter: error: {exc}", file=sys.stderr)
        return 2
    except (JumpstarterError, ValueError, OSError) as exc:
        if debug:
            raise
        print(f"jumpstarter: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
