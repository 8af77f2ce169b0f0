"""Remote boards from the CLI: client configs, exporters, leases, and shells on leased boards.

    jumpstarter login --token TOKEN                 # endpoint and identity come from the token
    jumpstarter get exporters -l board=rpi4
    jumpstarter lease create -l board=rpi4 --duration 30m --wait -o name
    jumpstarter shell -l board=rpi4 -- jumpstarter power on
    jumpstarter run -l board=rpi4 -- pytest tests/

`--client ALIAS|FILE` (or $JMP_CLIENT_CONFIG) picks the client config; otherwise the current one.
This module holds what the remote commands share and runs `shell`/`run` on a leased board; the
other commands live in `clientconfig.py` (login, config client) and `leases.py` (get, lease), and
their table in `remote_commands.py`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from jumpstarter.cli.output import note, print_wait
from jumpstarter.errors import ConfigError

if TYPE_CHECKING:
    from jumpstarter.client.remote import ControllerClient
    from jumpstarter.client.session import RemoteSession
    from jumpstarter.config.client import ClientConfig


def wants_remote(rest: list[str]) -> bool:
    """Does `shell`/`run` REST (the words after the command) ask for a leased board?

    Any option of the leased `shell`/`run` rows (`remote_commands.SHELL_ARGS`) says so.
    """
    from jumpstarter.cli.remote_commands import SHELL_OPTIONS

    for word in rest:
        if word == "--" or not word.startswith("-"):
            return False  # the command to run starts here
        name = word.split("=", 1)[0]
        if name in SHELL_OPTIONS or (word.startswith("-l") and not word.startswith("--")):
            return True
    return False


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


# -- shell / run on a leased board -----------------------------------------------------------


def cmd_remote_shell(args: argparse.Namespace) -> int:
    """`shell -l SELECTOR [-- CMD]`: a shell (or CMD) with JUMPSTARTER_HOST set to a leased board."""
    return cmd_shell(args, interactive=True)


def cmd_remote_run(args: argparse.Namespace) -> int:
    """`run -l SELECTOR -- CMD`: CMD with JUMPSTARTER_HOST set to a leased board; CMD's exit code."""
    return cmd_shell(args, interactive=False)


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
                note(f"acquired lease {session.name} (exporter {session.exporter})")
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
        note(
            f"[jumpstarter shell: lease {session.name} on {session.exporter}; JUMPSTARTER_HOST={session.path};"
            " exit to release]"
        )
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        from jumpstarter.cli.commands import cannot_start

        return cannot_start(command[0], exc)

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    def hang_up(reason: str) -> None:  # the session's monitor thread: the lease ended under the child
        note(f"jumpstarter: lease {session.name} ended ({reason})")
        child.send_signal(signal.SIGHUP)

    old = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    session.when_ended(hang_up)
    try:
        while True:  # wake often: a SIGTERM the kernel hands to a gRPC or monitor thread is handled
            try:  # (forwarded) only when the main thread next runs bytecode; waitpid alone never returns
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
