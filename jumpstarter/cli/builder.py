"""Command tables: each CLI command is a `Command` row; `add_commands` turns rows into argparse subparsers.

    ADMIN = Command("admin", "manage the controller", commands=(
        Command("get", "list clients, exporters, ...", run_get, args=(arg("kind", help="what to list"),)),
    ))
    add_commands(subparsers, [ADMIN])

A row with `commands` and no handler is a group: run alone, it prints its help and exits 2.
`one_of(arg(...), arg(...))` among a row's args makes options that exclude each other.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One `add_argument` call; `default_from` is called when the parser is built (env-dependent defaults)."""

    flags: tuple[str, ...]
    options: Mapping[str, Any]
    default_from: Callable[[], Any] | None = None


def arg(*flags: str, default_from: Callable[[], Any] | None = None, **options: Any) -> Arg:
    return Arg(flags, options, default_from)


@dataclass(frozen=True)
class OneOf:
    """Options that exclude each other (`--ca FILE | --insecure`): an argparse mutually exclusive group."""

    args: tuple[Arg, ...]


def one_of(*args: Arg) -> OneOf:
    return OneOf(args)


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, arguments and handler (or its own subcommands)."""

    name: str
    help: str
    handler: Handler | None = None
    args: tuple[Arg | OneOf, ...] = ()
    commands: tuple[Command, ...] = ()
    description: str | None = None  # `NAME --help` text; defaults to `help`
    raw_description: bool = False  # keep the description's line breaks (a module docstring)
    title: str = "commands"  # heading of the subcommand list
    metavar: str = "COMMAND"
    more_args: Callable[[argparse.ArgumentParser], None] | None = None  # arguments defined by a driver

    def __post_init__(self) -> None:
        if not self.help.strip():
            raise ValueError(f"command {self.name!r} has no help text")
        if (self.handler is None) == (not self.commands):
            raise ValueError(f"command {self.name!r} needs exactly one of a handler or subcommands")


def add_commands(subparsers: Any, rows: Sequence[Command]) -> None:
    """Add each row (and its subcommands, recursively) to an argparse subparsers object."""
    for row in rows:
        add_command(subparsers, row)


def add_command(subparsers: Any, row: Command) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        row.name,
        help=row.help,
        description=row.description or row.help,
        formatter_class=argparse.RawDescriptionHelpFormatter
        if row.raw_description
        else argparse.HelpFormatter,
    )
    for spec in row.args:
        if isinstance(spec, OneOf):
            group = parser.add_mutually_exclusive_group()
            for each in spec.args:
                add_argument(group, each)
        else:
            add_argument(parser, spec)
    if row.more_args is not None:
        row.more_args(parser)
    if row.commands:
        add_commands(parser.add_subparsers(title=row.title, metavar=row.metavar), row.commands)
        parser.set_defaults(func=functools.partial(print_usage, parser))
    else:
        parser.set_defaults(func=row.handler)
    return parser


def add_argument(parser: argparse._ActionsContainer, spec: Arg) -> None:
    """One `add_argument` call, on a parser or on a group of it."""
    options = dict(spec.options)
    if spec.default_from is not None:
        options["default"] = spec.default_from()
    parser.add_argument(*spec.flags, **options)


def print_usage(parser: argparse.ArgumentParser, args: argparse.Namespace | None = None) -> int:
    """A group run without a subcommand: show what it offers, exit 2 (usage error)."""
    parser.print_help(sys.stderr)
    return 2


def command_names(rows: Sequence[Command]) -> tuple[str, ...]:
    """The top-level names a table adds, in order."""
    return tuple(row.name for row in rows)
