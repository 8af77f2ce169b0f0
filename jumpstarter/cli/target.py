"""Which board the CLI talks to: --host, --board, --config, --env, --detect, or this host's only board."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass

from jumpstarter.errors import ConfigError, ConnectError

DEFAULT_BOARDS_DIR = "/run/jumpstarter/boards"


def boards_dir() -> str:
    return os.environ.get("JUMPSTARTER_BOARDS_DIR", DEFAULT_BOARDS_DIR)


def local_boards() -> dict[str, str]:
    """Board name -> socket path, for the exporterds running on this host."""
    return {
        os.path.basename(path)[: -len(".sock")]: path
        for path in sorted(glob.glob(os.path.join(boards_dir(), "*.sock")))
    }


@dataclass
class TargetChoice:
    host: str | None = None
    board: str | None = None
    config: str | None = None
    env: str | None = None
    detect: bool = False

    @property
    def given(self) -> bool:
        return bool(self.host or self.board or self.config or self.env or self.detect)

    def label(self) -> str:
        return (
            self.host or self.board or self.config or self.env or ("detected hardware" if self.detect else "")
        )


@dataclass(frozen=True)
class TargetOptions:
    """How errors name the options that pick a board (the CLI's, or the pytest plugin's own)."""

    host: str = "--host PATH"
    board: str = "--board NAME"
    others: str = "--config FILE or --env FILE.py"


CLI_OPTIONS = TargetOptions(board="--board NAME, or name it last (`jumpstarter power on NAME`)")


def resolve_socket(choice: TargetChoice, options: TargetOptions = CLI_OPTIONS) -> str | None:
    """The socket of an existing exporter, or None when the target is served in-process."""
    if choice.host:
        return choice.host
    if choice.board:
        boards = local_boards()
        if choice.board in boards:
            return boards[choice.board]
        path = os.path.join(boards_dir(), f"{choice.board}.sock")
        known = ", ".join(boards) or "none running"
        raise ConnectError(f"no board {choice.board!r} on this host ({path} missing; boards: {known})")
    if choice.config or choice.env or choice.detect:
        return None
    env_host = os.environ.get("JUMPSTARTER_HOST")
    if env_host:
        return env_host
    boards = local_boards()
    if len(boards) == 1:
        return next(iter(boards.values()))
    if not boards:
        raise ConnectError(
            f"no board: no exporter sockets in {boards_dir()}; use {options.host}, {options.others}"
        )
    raise ConnectError(f"several boards on this host ({', '.join(boards)}): pick one with {options.board}")


@contextlib.contextmanager
def open_target(choice: TargetChoice) -> Iterator[str]:
    """Yields a socket path for the chosen target, serving it in-process when needed.

    Drivers served in-process print their warnings and errors on stderr.
    """
    socket = resolve_socket(choice)
    if socket is not None:
        yield socket
        return
    import sys

    from jumpstarter.log import configure
    from jumpstarter.session.local import LocalServer

    configure("WARNING", json=False, stream=sys.stderr)  # --logs follows LogStream like for any exporter

    if choice.config:
        from jumpstarter.config.exporter import load_config

        config = load_config(choice.config)
        server = LocalServer(config.build, labels=config.labels, motd=config.motd)
    elif choice.env:
        server = LocalServer(lambda: load_env_file(choice.env or ""))
    else:
        from jumpstarter.detect import detected_tree

        server = LocalServer(detected_tree)
    with server as path:
        yield path


def load_env_file(path: str):  # type: ignore[no-untyped-def]
    """Run an environment Python file; it must define `board` (a Driver, or a function returning one)."""
    import runpy

    from jumpstarter.driver.base import Driver

    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file")
    namespace = runpy.run_path(path, run_name="__jumpstarter_env__")
    board = namespace.get("board")
    if callable(board) and not isinstance(board, Driver):
        board = board()
    if not isinstance(board, Driver):
        raise ConfigError(f"{path}: must define `board`, a Driver (or a function returning one)")
    return board
