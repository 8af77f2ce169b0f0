"""Remote boards from the CLI: client configs, exporters, leases, and shells on leased boards.

    jumpstarter login --token TOKEN                 # endpoint and identity come from the token
    jumpstarter get exporters -l board=rpi4
    jumpstarter lease create -l board=rpi4 --duration 30m --wait -o name
    jumpstarter shell -l board=rpi4 -- jumpstarter power on
    jumpstarter run -l board=rpi4 -- pytest tests/

`--client ALIAS|FILE` (or $JMP_CLIENT_CONFIG) picks the client config; otherwise the current one.
This module wires the parsers and runs `shell`/`run` on a leased board; the other
commands live in `clientconfig.py` (login, config client) and `leases.py` (get, lease).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from jumpstarter.errors import ConfigError, JumpstarterError

if TYPE_CHECKING:
    from jumpstarter.client.remote import ControllerClient
    from jumpstarter.client.session import RemoteSession
    from jumpstarter.config.client import ClientConfig

#: Options that make `shell`/`run` lease a remote board instead of using a local one.
REMOTE_SHELL_OPTIONS = ("-l", "--selector", "--lease", "--exporter", "-n", "--client", "--duration")
CLIENT_HELP = "client config alias or file (default: $JMP_CLIENT_CONFIG, else the current client)"


def wants_remote(rest: list[str]) -> bool:
    """Does `shell`/`run` REST (the words after the command) ask for a leased board?"""
    for word in rest:
        if word == "--" or not word.startswith("-"):
            return False  # the command to run starts here
        name = word.split("=", 1)[0]
        if name in REMOTE_SHELL_OPTIONS or (word.startswith("-l") and not word.startswith("--")):
            return True
    return False


# -- parsers ------------------------------------------------------------------------------


def _client_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", metavar="ALIAS|FILE", help=CLIENT_HELP)


def _selector_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "-l", "--selector", action="append", default=[], metavar="SELECTOR", help=help + " (repeatable)"
    )


def _token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", metavar="TOKEN", help="the client token (`-` reads it from stdin)")
    parser.add_argument("--namespace", help="override the namespace (default: from the token)")
    parser.add_argument(
        "--client-name", metavar="NAME", help="override the client name (default: from the token)"
    )
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument(
        "--ca", metavar="FILE", help="PEM file of the CA that signed the controller's certificate"
    )
    tls.add_argument(
        "--insecure", action="store_true", help="trust whatever certificate the controller presents"
    )
    parser.add_argument(
        "--unsafe", action="store_true", help="let upstream tools load any driver client class"
    )


def add_remote_parsers(sub: Any) -> None:
    """login, config client …, get exporters, lease …"""
    from jumpstarter.cli import clientconfig, leases

    login = sub.add_parser(
        "login",
        help="save a client config from a token and make it current",
        description="Save a client config (~/.config/jumpstarter/clients/ALIAS.yaml, mode 0600) from a "
        "controller-issued token, check it against the controller, and make it current. "
        "The endpoint defaults to the token's audience, the namespace and name to its subject.",
    )
    login.add_argument("endpoint", nargs="?", metavar="ENDPOINT", help="controller HOST:PORT")
    _token_options(login)
    login.add_argument(
        "--name", dest="alias", default="default", metavar="ALIAS", help="config name (default: default)"
    )
    login.add_argument("--no-check", action="store_true", help="save without contacting the controller")
    login.set_defaults(func=clientconfig.cmd_login, needs_board=False)

    config = sub.add_parser("config", help="client configs: create, use, list, delete")
    kinds = config.add_subparsers(title="kinds", metavar="KIND")
    config.set_defaults(func=lambda a: (config.print_help(sys.stderr), 2)[1], needs_board=False)
    client = kinds.add_parser("client", help="client configs")
    verbs = client.add_subparsers(title="commands", metavar="COMMAND")
    client.set_defaults(func=lambda a: (client.print_help(sys.stderr), 2)[1], needs_board=False)
    create = verbs.add_parser("create", help="create a client config from a token or a config file")
    create.add_argument("alias", metavar="ALIAS")
    create.add_argument("--from", dest="source", metavar="FILE", help="copy this ClientConfig file")
    create.add_argument("--endpoint", help="controller HOST:PORT (default: the token's audience)")
    _token_options(create)
    create.add_argument("--current", action="store_true", help="make it the current client")
    create.set_defaults(func=clientconfig.cmd_config_create, needs_board=False)
    use = verbs.add_parser("use", help="make a client config current")
    use.add_argument("alias", metavar="ALIAS")
    use.set_defaults(func=clientconfig.cmd_config_use, needs_board=False)
    listing = verbs.add_parser("list", help="list client configs (* = current)")
    listing.set_defaults(func=clientconfig.cmd_config_list, needs_board=False)
    delete = verbs.add_parser("delete", help="delete a client config")
    delete.add_argument("alias", metavar="ALIAS")
    delete.set_defaults(func=clientconfig.cmd_config_delete, needs_board=False)

    get = sub.add_parser("get", help="list the controller's exporters")
    kinds = get.add_subparsers(title="kinds", metavar="KIND")
    get.set_defaults(func=lambda a: (get.print_help(sys.stderr), 2)[1], needs_board=False)
    exporters = kinds.add_parser("exporters", help="exporters matching a selector")
    _selector_option(exporters, "label selector, e.g. board=rpi4")
    exporters.add_argument("-o", "--output", choices=["table", "json", "name"], default="table")
    _client_option(exporters)
    exporters.set_defaults(func=leases.cmd_get_exporters, needs_board=False)

    lease = sub.add_parser("lease", help="create, list, extend, transfer and release leases")
    verbs = lease.add_subparsers(title="commands", metavar="COMMAND")
    lease.set_defaults(func=lambda a: (lease.print_help(sys.stderr), 2)[1], needs_board=False)
    create = verbs.add_parser("create", help="request a lease on a board")
    _lease_target_options(create)
    create.add_argument("--duration", required=True, help="e.g. 30m, 2h, 1h30m, PT1H")
    create.add_argument("--begin-time", metavar="ISO8601", help="start later, e.g. 2025-06-01T08:00:00Z")
    create.add_argument(
        "--wait", action="store_true", help="wait until the lease is acquired (shows the queue position)"
    )
    create.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="lease tag (repeatable)"
    )
    create.add_argument(
        "--context", action="append", default=[], metavar="KEY=VALUE", help="lease context (repeatable)"
    )
    create.add_argument("--lease-id", default="", metavar="NAME", help="choose the lease name")
    create.add_argument("--allow-disabled", action="store_true", help="accept disabled exporters")
    create.add_argument("-o", "--output", choices=["table", "json", "name"], default="table")
    _client_option(create)
    create.set_defaults(func=leases.cmd_lease_create, needs_board=False)
    listing = verbs.add_parser("list", help="your active leases")
    listing.add_argument("--all", action="store_true", help="include ended leases")
    listing.add_argument(
        "-A", "--all-clients", action="store_true", help="leases of every client of the namespace"
    )
    _selector_option(listing, "only leases whose selector has these labels")
    listing.add_argument("--tag-filter", default="", metavar="SELECTOR", help="only leases with these tags")
    listing.add_argument("-o", "--output", choices=["table", "json", "name"], default="table")
    _client_option(listing)
    listing.set_defaults(func=leases.cmd_lease_list, needs_board=False)
    show = verbs.add_parser("get", help="show one lease")
    show.add_argument("name", metavar="NAME")
    show.add_argument("-o", "--output", choices=["table", "json", "name"], default="table")
    _client_option(show)
    show.set_defaults(func=leases.cmd_lease_get, needs_board=False)
    extend = verbs.add_parser("extend", help="make a lease longer")
    extend.add_argument("name", metavar="NAME")
    extend.add_argument("--duration", required=True, help="time to add, e.g. 30m")
    _client_option(extend)
    extend.set_defaults(func=leases.cmd_lease_extend, needs_board=False)
    transfer = verbs.add_parser("transfer", help="hand a lease to another client of the namespace")
    transfer.add_argument("name", metavar="NAME")
    transfer.add_argument("to", metavar="CLIENT")
    _client_option(transfer)
    transfer.set_defaults(func=leases.cmd_lease_transfer, needs_board=False)
    release = verbs.add_parser("release", help="end leases now")
    release.add_argument("names", nargs="+", metavar="NAME")
    _client_option(release)
    release.set_defaults(func=leases.cmd_lease_release, needs_board=False)


def _lease_target_options(parser: argparse.ArgumentParser) -> None:
    _selector_option(parser, "lease any exporter matching this label selector")
    parser.add_argument("-n", "--exporter", metavar="NAME", help="lease this exporter")


def add_remote_shell_parsers(sub: Any) -> None:
    """`shell`/`run` on a leased board (used when their options ask for one)."""
    for name, text in (
        ("shell", "lease a board and open a shell (or run CMD) with JUMPSTARTER_HOST set to it"),
        ("run", "lease a board, run CMD with JUMPSTARTER_HOST set to it, exit with CMD's code"),
    ):
        cmd = sub.add_parser(name, help=text, description=text + "; the lease is released on exit.")
        _lease_target_options(cmd)
        cmd.add_argument(
            "--lease", metavar="NAME", help="use this existing lease (it is not released on exit)"
        )
        cmd.add_argument("--duration", default="30m", help="lease duration (default 30m)")
        cmd.add_argument(
            "--acquisition-timeout",
            default="2h",
            metavar="DURATION",
            help="give up waiting after this (default 2h)",
        )
        _client_option(cmd)
        cmd.add_argument(
            "cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments"
        )
        cmd.set_defaults(
            func=lambda a, name=name: cmd_shell(a, interactive=name == "shell"), needs_board=False
        )


# -- helpers ------------------------------------------------------------------------------


@contextmanager
def controller(args: argparse.Namespace) -> Iterator[ControllerClient]:
    from jumpstarter.client.remote import ControllerClient, resolve_config

    with ControllerClient(resolve_config(args.client)) as client:
        yield client


def selector_text(parts: list[str]) -> str:
    from jumpstarter.selector import SelectorError, parse

    text = ",".join(p for p in parts if p)
    try:
        parse(text)
    except SelectorError as exc:
        raise ConfigError(str(exc)) from None
    return text


def key_values(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def duration_seconds(text: str) -> float:
    from jumpstarter.cli.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def when(ts: Any) -> str:
    if ts is None or not (ts.seconds or ts.nanos):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts.seconds))


def table(rows: list[list[str]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def as_json(messages: list[Any]) -> None:
    from google.protobuf.json_format import MessageToDict

    print(json.dumps([MessageToDict(m, preserving_proto_field_name=True) for m in messages], indent=2))


def print_wait(reason: str, message: str) -> None:
    print(f"waiting: {message or reason}", file=sys.stderr, flush=True)


# -- shell / run on a leased board -----------------------------------------------------------


def cmd_shell(args: argparse.Namespace, interactive: bool) -> int:
    from jumpstarter.client.remote import ControllerClient, resolve_config
    from jumpstarter.client.session import RemoteSession

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else list(args.cmd)
    if not command and not interactive:
        raise ConfigError("run needs a command: jumpstarter run -l SELECTOR -- CMD [ARGS...]")
    selector = selector_text(args.selector)
    if not (selector or args.exporter or args.lease):
        raise ConfigError(
            f"{'shell' if interactive else 'run'} needs -l SELECTOR, --exporter NAME or --lease NAME"
        )
    duration, patience = duration_seconds(args.duration), duration_seconds(args.acquisition_timeout)
    config = resolve_config(args.client)
    waited: list[str] = []

    def on_wait(reason: str, message: str) -> None:
        waited.append(message)
        print_wait(reason, message)

    with _stop_signals_interrupt(), ControllerClient(config) as client:
        with RemoteSession(
            client,
            selector=selector,
            exporter_name=args.exporter,
            duration=duration,
            lease_name=args.lease,
            on_wait=on_wait,
            acquisition_timeout=patience,
        ) as session:
            if waited:
                print(
                    f"acquired lease {session.name} (exporter {session.exporter})",
                    file=sys.stderr,
                    flush=True,
                )
            return _run_child(command, interactive, _child_env(session, config), session)


def _child_env(session: RemoteSession, config: ClientConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JUMPSTARTER_HOST=session.path,
        JMP_LEASE=session.name,
        JMP_EXPORTER=session.exporter,
        JMP_EXPORTER_LABELS=",".join(f"{k}={v}" for k, v in sorted(session.labels.items())),
        JMP_DRIVERS_ALLOW="UNSAFE" if config.unsafe else ",".join(config.allow),
        _JMP_SUPPRESS_DRIVER_WARNINGS="1",
    )
    return env


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP raise KeyboardInterrupt, so the lease is released like on Ctrl-C."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _run_child(command: list[str], interactive: bool, env: dict[str, str], session: RemoteSession) -> int:
    """Run CMD (or $SHELL); Ctrl-C belongs to it, SIGTERM/SIGHUP are passed on; SIGHUP when the lease ends."""
    if not command:
        command = [os.environ.get("SHELL") or "/bin/sh"]
        print(
            f"[jumpstarter shell: lease {session.name} on {session.exporter}; JUMPSTARTER_HOST={session.path};"
            " exit to release]",
            file=sys.stderr,
        )
    try:
        child = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        raise JumpstarterError(f"command not found: {command[0]}") from None

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    def hang_up(reason: str) -> None:  # the session's monitor thread: the lease ended under the child
        print(f"jumpstarter: lease {session.name} ended ({reason})", file=sys.stderr)
        child.send_signal(signal.SIGHUP)

    old = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    session.when_ended(hang_up)
    try:
        code = child.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
