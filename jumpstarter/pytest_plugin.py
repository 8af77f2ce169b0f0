"""pytest plugin: a `board` fixture (the root client) and an expect-style `console` fixture.

    def test_boots(board, console):
        board.power.cycle(wait=1)
        console.expect("login:", timeout=60)

The board comes from `--jumpstarter-host PATH`, `--jumpstarter-board NAME`,
or `$JUMPSTARTER_HOST` (set by `jumpstarter shell` / `jumpstarter run -- pytest`).
The console is the board's serial driver (`--jumpstarter-console PATH` picks
another, e.g. `dut.console`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jumpstarter", "drive a lab board")
    group.addoption("--jumpstarter-host", metavar="PATH", help="exporter socket (default: $JUMPSTARTER_HOST)")
    group.addoption(
        "--jumpstarter-board", metavar="NAME", help="a board of this host (/run/jumpstarter/boards)"
    )
    group.addoption(
        "--jumpstarter-console",
        metavar="PATH",
        help="driver path of the console (default: the serial driver)",
    )


def _target(config: pytest.Config) -> str:
    import os

    from jumpstarter.cli.target import TargetChoice, resolve_socket
    from jumpstarter.errors import JumpstarterError

    host = config.getoption("--jumpstarter-host") or None
    board = config.getoption("--jumpstarter-board") or None
    try:
        if host or board:
            socket = resolve_socket(TargetChoice(host=host, board=board))
        elif os.environ.get("JUMPSTARTER_HOST"):
            socket = os.environ["JUMPSTARTER_HOST"]
        else:
            socket = resolve_socket(TargetChoice())
    except JumpstarterError as exc:
        pytest.exit(f"jumpstarter: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    assert socket is not None
    return socket


@pytest.fixture(scope="session")
def board(pytestconfig: pytest.Config) -> Iterator[Any]:
    """The root client of the board under test (`board.power.on()`)."""
    import jumpstarter

    with jumpstarter.connect(_target(pytestconfig)) as root:
        yield root


def _find_console(root: Any, path: str | None) -> Any:
    from jumpstarter.client.drivers.serial import SerialClient

    if path:
        client = root
        for part in path.split("."):
            client = client[part]
        return client
    serials = [c for c in root.walk() if isinstance(c, SerialClient)]
    if not serials:
        raise pytest.UsageError(
            "jumpstarter: the board has no serial driver; pass --jumpstarter-console PATH"
        )
    named = [c for c in serials if c.name in ("serial", "console")]
    return (named or serials)[0]


@pytest.fixture
def console(board: Any, pytestconfig: pytest.Config) -> Iterator[Any]:
    """The board's serial console with `expect(pattern, timeout)`, `sendline(text)`, `before`/`after`."""
    client = _find_console(board, pytestconfig.getoption("--jumpstarter-console"))
    with client.console() as con:
        yield con
