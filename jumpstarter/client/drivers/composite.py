"""`CompositeClient`: a group of drivers reached by name (`board.power`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from jumpstarter.client.base import DriverClient
from jumpstarter.client.drivers.generic import add_call_commands, subcommands


class CompositeClient(DriverClient):
    """A group of drivers."""

    def add_cli(self, parser: argparse.ArgumentParser) -> None:
        if self.children:
            add_children_cli(self, parser.add_subparsers(title="drivers", metavar="DRIVER"))


def add_children_cli(client: DriverClient, sub: Any, reserved: frozenset[str] = frozenset()) -> None:
    """One subcommand per child, named after it, with the child's own commands below."""
    for name, child in client.children.items():
        if name in reserved:
            continue
        child_parser = sub.add_parser(
            name,
            help=child.help_text(),
            description=child.help_text(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        child_parser.set_defaults(func=_usage(child_parser))
        child.add_cli(child_parser)
        if not isinstance(child, CompositeClient):  # a group's words are its drivers, not methods
            add_call_commands(child, subcommands(child_parser))


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show
