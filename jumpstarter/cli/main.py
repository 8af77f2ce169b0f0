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

from jumpstarter.cli.admin_commands import ADMIN
from jumpstarter.cli.board_word import RULE
from jumpstarter.cli.builder import Command, add_commands, arg, command_names
from jumpstarter.cli.completion import HIDDEN, SHELLS, cmd_completion
from jumpstarter.cli.remote_commands import REMOTE_COMMANDS, REMOTE_SHELL_COMMANDS
from jumpstarter.cli.target import TargetChoice
from jumpstarter.lab.cli import LAB

LOGS_READY_WAIT = 2.0  # seconds `--logs` waits for the exporter to start collecting records for it
SOURCES = {1: "driver", 2: "beforeLease", 3: "afterLease", 4: "exporter"}
EPILOG = (
    """\
target (first match wins): --host, --board, --config, --env, --detect, $JUMPSTARTER_HOST,
or the only board of this host (sockets in $JUMPSTARTER_BOARDS_DIR, default /run/jumpstarter/boards).
Run `jumpstarter` with no arguments to list this host's boards and detected USB hardware.
remote boards: `jumpstarter login --token TOKEN`, then `jumpstarter shell -l board=rpi4 [-- CMD]`.
exit codes: 0 ok, 1 driver or connection error, 2 usage or config error; run/shell exit with CMD's code
(127: CMD not found, 126: CMD not executable).
"""
    + RULE
)


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


def cmd_boards(args: argparse.Namespace) -> int:
    from jumpstarter.cli.commands import list_boards

    return list_boards()


def cmd_demo(args: argparse.Namespace) -> int:
    from jumpstarter.demo.walk import run_demo

    return run_demo(keep=args.keep)


def cmd_version(args: argparse.Namespace) -> int:
    print(_version())
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from jumpstarter.cli.commands import describe

    return describe(args.board_root, args.board_socket)


def cmd_shell(args: argparse.Namespace) -> int:
    from jumpstarter.cli.commands import subshell

    return subshell(args.board_socket, args.cmd, interactive=True)


def cmd_run(args: argparse.Namespace) -> int:
    from jumpstarter.cli.commands import subshell

    return subshell(args.board_socket, args.cmd, interactive=False)


def cmd_port_forward(args: argparse.Namespace) -> int:
    from jumpstarter.cli.commands import port_forward

    return port_forward(args.board_root, args)


def _forward_arguments(parser: argparse.ArgumentParser) -> None:
    from jumpstarter.client.drivers.network import add_forward_arguments

    add_forward_arguments(parser)


LEASED_HINT = " With -l SELECTOR (or --exporter/--lease), a board leased from the controller instead."
CMD = arg("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")

#: The commands that work without a board, in `--help` order.
STATIC_COMMANDS: tuple[Command, ...] = (
    Command("boards", "list this host's boards and detected USB hardware", cmd_boards),
    Command(
        "demo",
        "run the demo lab: a fake board with a serial console and a power switch",
        cmd_demo,
        description="Start an exporterd serving a simulated board (a process on a pseudo-terminal, "
        "switched by a local HTTP power switch), then power it on, read its boot banner, power it off.",
        args=(arg("--keep", action="store_true", help="keep the demo lab running and open a shell in it"),),
    ),
    ADMIN,
    *REMOTE_COMMANDS,
    LAB,
    Command("version", "print the version", cmd_version),
    Command(
        "completion",
        "print the shell completion script: bash or zsh",
        cmd_completion,
        description="Print the completion script (commands, options, boards, driver methods). "
        "The lab-host installer puts it in place; else: "
        "`source <(jumpstarter completion bash)` in ~/.bashrc, or the zsh output as `_jumpstarter` in $fpath.",
        args=(arg("shell", choices=list(SHELLS), help="bash or zsh"),),
    ),
)

#: The commands of a board (with `board_root` and `board_socket` set); its drivers' commands follow.
BOARD_COMMANDS: tuple[Command, ...] = (
    Command("describe", "show the board's drivers, labels and methods", cmd_describe),
    Command(
        "shell",
        "open a shell (or run CMD) with JUMPSTARTER_HOST set to this board",
        cmd_shell,
        args=(CMD,),
        description="open a shell (or run CMD) with JUMPSTARTER_HOST set to this board." + LEASED_HINT,
    ),
    Command(
        "run",
        "run CMD with JUMPSTARTER_HOST set; exit with its code",
        cmd_run,
        args=(CMD,),
        description="run CMD with JUMPSTARTER_HOST set; exit with its code "
        "(127: CMD not found, 126: not executable)." + LEASED_HINT,
    ),
    Command(
        "port-forward",
        "forward a local TCP port to a network driver",
        cmd_port_forward,
        args=(arg("driver", metavar="NAME", help="network driver path, e.g. ssh or dut.ssh"),),
        more_args=_forward_arguments,
    ),
)

NO_TARGET = frozenset(command_names(STATIC_COMMANDS))
BUILTINS = (*command_names(BOARD_COMMANDS), *command_names(STATIC_COMMANDS))  # drivers may not shadow these


def full_parser(root: Any, socket: str, remote_shell: bool = False) -> argparse.ArgumentParser:
    parser = global_parser(add_help=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_commands(sub, STATIC_COMMANDS)
    if root is not None:
        from jumpstarter.client.drivers.composite import add_children_cli

        parser.set_defaults(board_root=root, board_socket=socket)
        add_commands(sub, BOARD_COMMANDS)
        add_children_cli(root, sub, reserved=frozenset(BUILTINS))
    elif remote_shell:
        add_commands(sub, REMOTE_SHELL_COMMANDS)
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

    from jumpstarter.cli.board_word import trailing_board

    word = None if choice.given or wants_help else trailing_board(argv, ns.command, NO_TARGET)
    if word is not None:
        code = _on_board(argv, TargetChoice(board=word), ns.command, wants_help, board_word=True)
        if code is not None:
            return code
    code = _on_board(argv, choice, ns.command, wants_help)
    assert code is not None
    return code


def _on_board(
    argv: list[str], choice: TargetChoice, command: str | None, wants_help: bool, board_word: bool = False
) -> int | None:
    """Run argv on the chosen board; with `board_word`, None when the last word is no board after all."""
    from jumpstarter.cli.board_word import takes_as_board
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
                if board_word:
                    if not takes_as_board(parser, argv):
                        return None
                    argv = argv[:-1]
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
            return _help_without_board(command, argv, exc)
        raise


def _help_without_board(command: str | None, argv: list[str], exc: Exception) -> int:
    """`--help` with no board to ask: `shell`/`run` show their leased-board help, others the top level."""
    if command in ("shell", "run"):
        try:
            full_parser(None, "", remote_shell=True).parse_args(argv)
        except SystemExit as done:  # argparse printed the help
            print(f"\n(no board on this host for `{command}` without -l: {exc})")
            return int(done.code or 0)
    full_parser(None, "").print_help()
    print(f"\n(no board commands: {exc})")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    func: Callable[[argparse.Namespace], Any] = args.func
    result = func(args)
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


def _follow_logs(connection: Any) -> threading.Thread:
    """Print the exporter's records on stderr; returns once the exporter collects them for us
    (at most LOGS_READY_WAIT: an upstream exporter only answers with its first record)."""
    subscribed = threading.Event()

    def follow() -> None:
        try:
            for record in connection.logs(on_open=subscribed.set):
                fields = " ".join(f"{k}={v}" for k, v in sorted(record.structured_fields.items()))
                source = SOURCES.get(record.source, "exporter")
                sys.stderr.write(f"[{source}] {record.severity:<7} {record.message} {fields}".rstrip() + "\n")
                sys.stderr.flush()
        except Exception:
            pass

    thread = threading.Thread(target=follow, daemon=True, name="logs")
    thread.start()
    subscribed.wait(LOGS_READY_WAIT)
    return thread


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from jumpstarter.errors import ConfigError, JumpstarterError

    if argv[:1] == [HIDDEN]:  # the completion scripts ask at each Tab
        from jumpstarter.cli.completion import complete

        try:
            print("\n".join(complete(argv[1:])))
        except Exception:  # completion must never spill a traceback into the prompt
            pass
        return 0
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
