"""The board named last: `jumpstarter power on rpi4-01` means `jumpstarter --board rpi4-01 power on`.

The last word is taken as the board only when it cannot be mistaken for an argument:
no target option is given, it names a board of this host (a socket in the boards dir), no
`--` comes before it, the command is not `shell`/`run` (their words are CMD), and the
command is complete without it while the board's own parser would refuse it as an extra
argument. Otherwise the word stays an argument (`serial expect rpi4-01` looks for the text).
"""

from __future__ import annotations

import argparse
import contextlib
import io

from jumpstarter.cli.target import local_boards

RULE = (
    "board last: `jumpstarter power on rpi4-01` is `--board rpi4-01 power on` when no target option is\n"
    "given, the last word names a board of this host, no `--` precedes it, and the command takes no\n"
    "more arguments there (never for shell/run: their words are CMD)."
)
NEVER = frozenset({"shell", "run"})


def trailing_board(argv: list[str], command: str | None, excluded: frozenset[str]) -> str | None:
    """The last word of `argv` when it may name the board (the parser has the last say)."""
    if command is None or command in NEVER or command in excluded or len(argv) < 2 or "--" in argv:
        return None
    word = argv[-1]
    if word.startswith("-") or word == command:
        return None
    return word if word in local_boards() else None


def takes_as_board(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """Is `argv[-1]` an extra word for `parser`, the command before it complete?"""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv[:-1])
            _, extra = parser.parse_known_args(argv)
        except SystemExit:
            return False
    return extra == argv[-1:]
