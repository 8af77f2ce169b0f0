"""The built-in commands: boards, describe, shell/run, port-forward."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from jumpstarter.cli.target import boards_dir, local_boards
from jumpstarter.errors import ConfigError, JumpstarterError


def _probe(path: str) -> str:
    if not os.access(path, os.R_OK | os.W_OK):
        from jumpstarter.channels import group_name

        return f"permission denied (join the socket's group: {group_name(os.stat(path).st_gid)})"
    try:
        from jumpstarter.client.connection import Connection

        connection = Connection(path)
        try:
            report = connection.report(timeout=2)
            return f"ready, {len(report.reports) - 1} drivers"
        finally:
            connection.close()
    except JumpstarterError as exc:
        return f"not answering ({exc})"


def list_boards() -> int:
    boards = local_boards()
    print(f"boards on this host ({boards_dir()}):")
    if not boards:
        print("  none running")
    for name, path in boards.items():
        print(f"  {name:<20} {_probe(path)}")
    try:
        from jumpstarter.detect import detect_hardware

        hardware = detect_hardware()
    except Exception as exc:  # no udev here (a laptop, a container): say so, do not fail
        print(f"\nUSB hardware: detection unavailable ({exc})")
        return 0
    print("\nUSB hardware detected (serve it with `jumpstarter --detect ...`):")
    if not hardware:
        print("  none")
    for item in hardware:
        print(f"  {item.kind:<8} {item.devnode:<16} {item.description}")
    return 0


def describe(root: Any, socket: str) -> int:
    from jumpstarter.client.tree import CLIENT_LABEL

    print(f"board at {socket}")
    for client in root.walk():
        depth = client.path.count(".") + 1 if client.path else 0
        indent = "  " * depth
        title = client.path.rsplit(".", 1)[-1] if client.path else "(root)"
        print(f"{indent}{title}: {type(client).__name__} [{client.labels.get(CLIENT_LABEL, '?')}]")
        if client.description:
            print(f"{indent}  {client.description}")
        extra = {k: v for k, v in client.labels.items() if not k.startswith("jumpstarter.dev/")}
        if extra:
            print(f"{indent}  labels: {', '.join(f'{k}={v}' for k, v in sorted(extra.items()))}")
        for method, text in sorted(client.methods_description.items()):
            print(f"{indent}  - {method}: {text}")
    return 0


def subshell(socket: str, command: list[str], interactive: bool) -> int:
    """Run CMD (or an interactive shell) with JUMPSTARTER_HOST set; return its exit code."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        if not interactive:
            raise ConfigError("run needs a command: jumpstarter run -- CMD [ARGS...]")
        command = [os.environ.get("SHELL") or "/bin/sh"]
        print(f"[jumpstarter shell: JUMPSTARTER_HOST={socket}; exit to leave]", file=sys.stderr)
    env = dict(os.environ)
    env["JUMPSTARTER_HOST"] = socket
    env["JMP_DRIVERS_ALLOW"] = "UNSAFE"  # upstream `j` inside our shell: local targets are trusted
    env["_JMP_SUPPRESS_DRIVER_WARNINGS"] = "1"
    try:
        return subprocess.call(command, env=env)
    except OSError as exc:
        return cannot_start(command[0], exc)


COMMAND_NOT_FOUND = 127  # what a shell answers for a command it cannot find
NOT_EXECUTABLE = 126  # ... and for one it found but cannot execute


def cannot_start(name: str, exc: OSError) -> int:
    """CMD could not be started: say why on stderr and return a shell's exit code for it."""
    if isinstance(exc, FileNotFoundError):
        print(f"jumpstarter: {name}: command not found", file=sys.stderr)
        return COMMAND_NOT_FOUND
    print(f"jumpstarter: {name}: cannot execute: {exc.strerror or exc}", file=sys.stderr)
    return NOT_EXECUTABLE


def port_forward(root: Any, args: argparse.Namespace) -> int:
    from jumpstarter.client.drivers.network import NetworkClient, run_forward

    client = root
    for part in args.driver.split("."):
        try:
            client = client[part]
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
    if not isinstance(client, NetworkClient):
        raise JumpstarterError(f"{args.driver} is not a network driver ({type(client).__name__})")
    return run_forward(client, args)
